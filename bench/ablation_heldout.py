"""Held-out pretext figures of an ablation's built pretraining runs, measured again at more views per video.

``bench/ablation_synthetic.py`` records each run's held-out figures as its pretraining measured them.
This script measures the runs it built again with today's ``student/pretext_eval.py`` (e.g. at the
demo's 8 views per video, where runs built before ``pretrain.heldout_views`` existed used one),
without retraining: it finds each (variant, seed)'s pretraining folder by the config saved in it,
loads its ``student.pt`` whole, and builds the untrained network as pretraining initialises it for that
seed. Per run: every figure trained and untrained, and trained − untrained paired by view; per
variant: the mean over seeds and the 95 % t-interval over seeds of the gain. ``--random-head`` also
measures each trained encoder with the untrained network's A-VID head (``avid_top1_head`` gain:
what the trained head adds on the same encoder).

    python bench/ablation_heldout.py --work /tmp/ablB --variants kd_only wo_kd ti full --seeds 0 1 2 3 4 --views 8
    python bench/ablation_heldout.py --work /tmp/ablB --variants full --random-head --out /tmp/head.json
    python bench/ablation_heldout.py --paired bench/results/ablation_heldout.json full /tmp/other.json full
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_synthetic import VARIANTS  # noqa: E402
from common import RESULTS, Bench, print_table  # noqa: E402

from data_manifests.manifest import load_manifest  # noqa: E402
from pipeline.core.config import Config, load_config, semantic_dict  # noqa: E402
from pipeline.core.stats import mean_interval  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402
from student.artifacts import load_pretrained_student  # noqa: E402
from student.pretext_eval import (build_heldout_set, describe, evaluate_pretext, heldout_entries,  # noqa: E402
                                  paired_gain, teacher_for_heldout)
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402

FIGURES = ("rsp_acc", "avid_top1", "kd_person_iou", "kd_part_miou")
NEW_KEYS = {"heldout_views"}  # keys a run built before them does not record; they only change the measurement


def run_config(variant: str, seed: int, extra: list[str]) -> Config:
    """The config of one ablation run, as bench/ablation_synthetic.py builds it."""
    return load_config(overrides=extra + [f"pretrain.seed={seed}", f"finetune.seed={seed}"] + VARIANTS[variant])


def _plain(value: Any) -> Any:
    """A config value as TOML reads it back (tuples are lists)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def find_pretrain_dir(root: Path, cfg: Config) -> Path:
    """The built pretraining folder whose saved [model] and [pretrain] match ``cfg`` (output-changing keys)."""
    want = {s: {k: v for k, v in semantic_dict(getattr(cfg, s)).items() if k not in NEW_KEYS}
            for s in ("model", "pretrain")}
    found = []
    for d in sorted(p for p in root.iterdir() if (p / "student.pt").is_file() and (p / "config.toml").is_file()):
        saved = tomllib.loads((d / "config.toml").read_text(encoding="utf-8"))
        if all(saved.get(s, {}).get(k) == _plain(v) for s, keys in want.items() for k, v in keys.items()):
            found.append(d)
    if not found:
        raise SystemExit(f"no built pretraining run in {root} matches seed {cfg.pretrain.seed} and this variant: "
                         f"run bench/ablation_synthetic.py first")
    return max(found, key=lambda d: (d / "student.pt").stat().st_mtime)  # the latest build if several


def paired_runs(a: Path, a_variant: str, b: Path, b_variant: str) -> list[dict[str, Any]]:
    """Per figure, run ``a_variant`` of result file ``a`` minus ``b_variant`` of ``b``, paired by seed (the
    seeds both hold), with the 95 % t-interval: e.g. the full recipe against the same recipe at λ_a 0."""
    def runs(path: Path, variant: str) -> dict[int, dict[str, Any]]:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {r["seed"]: r["trained"] for r in record["figures"]["runs"] if r["variant"] == variant}
    ra, rb = runs(a, a_variant), runs(b, b_variant)
    seeds = sorted(set(ra) & set(rb))
    rows = []
    for key in FIGURES:
        diffs = [ra[s][key] - rb[s][key] for s in seeds
                 if isinstance(ra[s].get(key), (int, float)) and isinstance(rb[s].get(key), (int, float))]
        if (ci := mean_interval(diffs)) is not None:
            mean, low, high = ci
            rows.append({"figure": key, "seeds": len(diffs), "a": round(sum(ra[s][key] for s in seeds) / len(seeds), 4),
                         "b": round(sum(rb[s][key] for s in seeds) / len(seeds), 4), "a − b": round(mean, 4),
                         "95 %": f"[{low:+.4f}, {high:+.4f}]"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="the ablation's --work folder (required but with --paired)")
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "scratch"],
                    choices=[v for v in VARIANTS if v != "scratch"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--views", type=int, default=8, help="items per held-out video")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="the ablation's --set overrides, if any")
    ap.add_argument("--random-head", action="store_true",
                    help="also measure each trained encoder with the untrained network's A-VID head g_a (how much of "
                         "the A-VID figure the trained head carries; KD only's head is never trained)")
    ap.add_argument("--out", type=Path, default=RESULTS / "ablation_heldout.json")
    ap.add_argument("--paired", nargs=4, metavar=("A_JSON", "A_VARIANT", "B_JSON", "B_VARIANT"), default=None,
                    help="only print A's variant − B's variant per figure, paired by seed, from two result files")
    args = ap.parse_args()
    if args.paired:
        a, av, b, bv = args.paired
        print_table(paired_runs(Path(a), av, Path(b), bv), title=f"{av} ({a}) − {bv} ({b}), paired by seed")
        return
    if args.work is None:
        ap.error("--work is required (the ablation's --work folder)")
    work = args.work / "default"
    base = load_config(overrides=args.extra)
    graph = StageGraph(base, work)
    manifest_dir = graph.manifest(base.pretrain.dataset).out_dir(work)
    manifest = load_manifest(manifest_dir)
    entries = heldout_entries(manifest, base.clips.splits, base.pretrain.heldout_videos)
    teacher = teacher_for_heldout(base.teacher, "cpu")
    hs = build_heldout_set(manifest, entries, clip_len=base.clips.clip_len, speeds=base.clips.speeds,
                           input_size=base.model.input_size, crop_area=base.pretrain.crop_area, teacher=teacher,
                           views=args.views)
    bench = Bench("ablation_heldout", "held-out pretext figures of the ablation's pretraining runs at "
                  f"{args.views} views per video (trained beside untrained, paired by view)",
                  {"work": str(work), "variants": args.variants, "seeds": args.seeds, "views": args.views,
                   "videos": len(hs), "extra": args.extra, "random_head": args.random_head,
                   "torch_threads": torch.get_num_threads()})
    runs: list[dict[str, Any]] = []
    root = work / "pretrain" / base.pretrain.dataset
    for variant in args.variants:
        for seed in args.seeds:
            cfg = run_config(variant, seed, args.extra)
            pretrain_dir = find_pretrain_dir(root, cfg)
            trained, meta = load_pretrained_student(pretrain_dir)
            seed_all(cfg.pretrain.seed)
            untrained = build_pretrain_model(cfg.model, cfg.pretrain, int(meta.get("num_parts", 7))).student
            fig = {"trained": evaluate_pretext(trained, hs), "untrained": evaluate_pretext(untrained, hs)}
            if args.random_head:
                mixed = copy.deepcopy(trained)
                mixed.g_a.load_state_dict(untrained.g_a.state_dict())
                fig["random_head"] = evaluate_pretext(mixed, hs)
            gain = paired_gain(fig["trained"], fig["untrained"])
            print(f"{variant} seed {seed} ({pretrain_dir.name}):\n  trained:   {describe(fig['trained'])}\n"
                  f"  untrained: {describe(fig['untrained'])}", flush=True)
            if args.random_head:
                print(f"  trained encoder, untrained g_a: {describe(fig['random_head'])}", flush=True)
            runs.append({"variant": variant, "seed": seed, "pretrain_dir": pretrain_dir.name, **fig, "gain": gain})
    summary = []
    for variant in args.variants:
        rs = [r for r in runs if r["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "seeds": len(rs)}
        for key in FIGURES:
            vals = [r["trained"][key] for r in rs if isinstance(r["trained"].get(key), (int, float))]
            base_vals = [r["untrained"][key] for r in rs if isinstance(r["untrained"].get(key), (int, float))]
            if vals:
                row[key] = round(sum(vals) / len(vals), 4)
                row[f"{key}_untrained"] = round(sum(base_vals) / len(base_vals), 4)
            gains = [r["trained"][key] - r["untrained"][key] for r in rs
                     if isinstance(r["trained"].get(key), (int, float))]
            if (ci := mean_interval(gains)) is not None:
                row[f"{key}_gain"] = [round(v, 4) for v in ci]
        if args.random_head:  # the trained head's share: trained − (trained encoder, untrained head), by seed
            head = [r["trained"]["avid_top1"] - r["random_head"]["avid_top1"] for r in rs]
            row["avid_top1_random_head"] = round(sum(r["random_head"]["avid_top1"] for r in rs) / len(rs), 4)
            if (ci := mean_interval(head)) is not None:
                row["avid_top1_head_gain"] = [round(v, 4) for v in ci]
        summary.append(row)
    print_table([{"variant": r["variant"], "seeds": r["seeds"],
                  **{f"{k} (untrained)": f"{r.get(k, float('nan')):.3f} ({r.get(k + '_untrained', float('nan')):.3f})"
                     for k in FIGURES if k in r},
                  **{f"{k} gain [95 %]": "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r[k + "_gain"])
                     for k in ("rsp_acc", "avid_top1", "avid_top1_head") if k + "_gain" in r}} for r in summary],
                title=f"held-out pretext figures, {args.views} views per video, mean over seeds")
    bench.write({"summary": summary, "runs": runs}, out=args.out)


if __name__ == "__main__":
    main()
