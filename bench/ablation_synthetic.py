"""A small-scale version of the paper's Table 2 on the synthetic data, with the paper's Fig. 3 measured.

Variants (each finetuned on the HMDB51-style split 1 and tested there, video-level top-1 / top-5):
  scratch  finetune from random initialisation (no pretraining)
  kd_only  pretraining with the human-prior distillation alone (pretrain.lambda_m = lambda_a = 0)
  wo_kd    pretraining without the human-prior distillation branch (model.kd = false): RSPNet
  ti       task-independent: one high-level encoder shared by every head (model.task_dependent = false)
  full     the paper's model

Each run reports:
- top-1 on the in-distribution test (the ordinary HMDB51-style test split, whose backgrounds go
  with the class as in training when ``synthetic.scene_bias`` > 0) and on the scene-swapped copy of
  the same videos (hmdb51_scene_swapped/, data_manifests/synthetic/scene_swap.py), and the drop
  between them: how much the classifier leaned on the scene;
- the human-focus score (student/human_focus.py): the share of the classifier's class-activation-map
  mass inside the person's exact mask, mean over the test videos (a uniform map scores
  ``person_area``);
- the held-out pretext figures of its pretraining (student/pretext_eval.py: RSP accuracy, A-VID
  top-1 against the held-out gallery, KD person IoU and part mIoU), and the untrained network's.
Per variant: mean ± std over seeds, and the paired difference to scratch (same seed, same test
videos) with a 95 % t-interval; "*" marks an interval that excludes 0. The CAMs of w/o KD and full
(first seed) on the same test clips are drawn side by side in bench/results/ablation_cams.png.

Scene-swapped top-1 is computed here, from the PNG frames, with the evaluate stage's protocol
(``evaluate.clips`` evenly spaced clips, centre crop, the finetuning protocol's view aggregation).

Every run goes through the real stages (``pipeline run`` in a subprocess) in one work directory, so
the synthetic data, manifests and teacher cache are built once (first, alone) and shared, and a run
that is already built is only collected. Seeds vary pretraining and finetuning (``pretrain.seed``,
``finetune.seed``); the data stay fixed, so the test videos are the same for every run and
``full − scratch`` etc. are also reported paired by seed. ``--jobs 2`` runs two variants at once,
one torch thread each (the same throughput as one at a time on 2 cores, less idle time). The JSON
is rewritten after every run (``"complete": false`` until the last), so an interrupted benchmark
keeps what it measured; a failed ``pipeline run`` is retried and its stages resume.

    python bench/ablation_synthetic.py --work /tmp/abl   # the demo config, seeds 0-4, 5 variants (hours, 2 cores)
    python bench/ablation_synthetic.py --seeds 0 1 2 3 4 5 6 7   # more seeds
    python bench/ablation_synthetic.py --quick   # smoke run: tiny sizes, 2 seeds, scratch + full (27 min, loaded)
    python bench/ablation_synthetic.py --set finetune.epochs=6   # any override, for every run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Bench, print_table  # noqa: E402

from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402
from pipeline.core.stats import mean_interval  # noqa: E402

VARIANTS = {
    "scratch": ["finetune.from_scratch=true",
                'run.stages=["synthetic", "manifest", "finetune", "evaluate"]'],
    "kd_only": ["pretrain.lambda_m=0", "pretrain.lambda_a=0"],
    "wo_kd": ["model.kd=false"],
    "ti": ["model.task_dependent=false"],
    "full": [],
}
LABELS = {"scratch": "from scratch", "kd_only": "KD only", "wo_kd": "w/o KD (RSPNet)", "ti": "TI",
          "full": "full (KD + RSP + A-VID, TD)"}
QUICK = ["synthetic.kinetics_per_class=4", "synthetic.hmdb_per_class=6", "synthetic.ucf_per_class=2",
         "synthetic.frames=24", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2", "finetune.epochs=1",
         "evaluate.clips=2"]
QUICK_VARIANTS = ["scratch", "full"]
# full − X isolates one part of the model (the paper's Table 2 reading)
FULL_AGAINST = (("kd_only", "the contrastive tasks (RSP + A-VID)"), ("wo_kd", "the human prior (KD)"),
                ("ti", "task-dependent high-level encoders"))
PAIRED = ("top1", "top1_swapped", "drop", "human_focus")  # differences to scratch, per seed
# how each paired difference is printed: (key, column label, scale)
PAIRED_COLUMNS = (("top1", "Δ in-dist", 1.0), ("top1_swapped", "Δ swapped", 1.0), ("drop", "Δ drop", 1.0),
                  ("human_focus", "Δ focus %", 100.0))


def stage_seconds(work: Path, overrides: list[str]) -> dict[str, float | None]:
    """Build time (s) of this run's pretrain / finetune / evaluate stages, from their stage.json."""
    graph = StageGraph(load_config(overrides=overrides), work)
    out: dict[str, float | None] = {}
    for kind, make in (("pretrain", graph.pretrain), ("finetune", graph.finetune), ("evaluate", graph.evaluate)):
        if kind == "pretrain" and "finetune.from_scratch=true" in overrides:
            continue
        rec = make().out_dir(work) / "stage.json"
        out[kind] = json.loads(rec.read_text()).get("timings", {}).get("build_s") if rec.is_file() else None
    return out


def pipeline_command(work: Path, overrides: list[str], command: list[str], log_path: Path, retries: int,
                     threads: int) -> int:
    """Run ``pipeline --work-dir WORK --set ... COMMAND`` (retried on failure, appending to the log);
    returns the number of attempts. Exits the benchmark when every attempt failed."""
    repo = Path(__file__).resolve().parents[1]  # this checkout's code, not whichever `pipeline` is installed
    args = [sys.executable, "-m", "pipeline.cli", "--work-dir", str(work)]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for attempt in range(1, retries + 2):
        with open(log_path, "a") as log:
            log.write(f"\n=== attempt {attempt}: {' '.join(args + command)}\n")
            log.flush()
            proc = subprocess.run(args + command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo)
        if proc.returncode == 0:
            return attempt
        print(f"{log_path.stem}: `pipeline {' '.join(command)}` exited {proc.returncode} (attempt {attempt}); "
              f"see {log_path}", flush=True)
    raise SystemExit(f"{log_path.stem}: pipeline {' '.join(command)} failed {retries + 1} times; see {log_path}")


def run_variant(work: Path, overrides: list[str], log_dir: Path, tag: str, retries: int,
                threads: int) -> tuple[dict, float, int]:
    """One ``pipeline run``; returns (evaluate metrics, wall s, attempts)."""
    t0 = time.perf_counter()
    attempts = pipeline_command(work, overrides, ["run"], log_dir / f"{tag}.log", retries, threads)
    wall = time.perf_counter() - t0
    ev = StageGraph(load_config(overrides=overrides), work).evaluate().out_dir(work)
    return json.loads((ev / "metrics.json").read_text()), wall, attempts


HELDOUT = ("rsp_acc", "avid_top1", "kd_person_iou", "kd_part_miou")


def pretext_final(work: Path, overrides: list[str]) -> dict[str, float]:
    """From the pretraining metrics.jsonl: the held-out figures of the trained student (``heldout_*``) and of
    the untrained network (``untrained_*``), the A-VID gallery size, and the last epoch's training-batch
    accuracies (``batch_*``, diagnostics)."""
    cfg = load_config(overrides=overrides)
    if cfg.finetune.from_scratch:
        return {}
    path = StageGraph(cfg, work).pretrain().out_dir(work) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    out: dict[str, float] = {}
    held = [r for r in rows if r.get("event") == "heldout"]
    first = next((r for r in held if r["step"] == 0), None)
    last = held[-1] if held and held[-1]["step"] > 0 else None
    for prefix, rec in (("heldout_", last), ("untrained_", first)):
        if rec is not None:
            out.update({prefix + k: rec[k] for k in HELDOUT if rec.get(k) is not None})
            out["avid_gallery"] = rec["avid_gallery"]
    epochs = [r for r in rows if r.get("event") == "epoch"]
    if epochs:
        out.update(batch_acc_rsp=epochs[-1]["acc_rsp"], batch_acc_avid=epochs[-1]["acc_avid_pos"])
    return out


def png_frames(folder: Path):
    """A frame reader (indices -> RGB uint8 (N, H, W, 3)) over ``frame000001.png ...`` (1-based)."""
    import cv2
    import numpy as np

    def read(indices: list[int]) -> "np.ndarray":
        frames = []
        for i in indices:
            img = cv2.imread(str(folder / f"frame{i + 1:06d}.png"))
            if img is None:
                raise SystemExit(f"{folder}: frame{i + 1:06d}.png is missing or unreadable")
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return np.stack(frames)
    return read


def swapped_top1(work: Path, overrides: list[str]) -> float | None:
    """Video top-1 (%) of this run's classifier on the scene-swapped test list of the finetuning split, with
    the evaluate stage's protocol; None when the synthetic data have no scene-swapped set."""
    import torch

    from data_manifests.synthetic.scene_swap import SWAPPED_DIR
    from student.artifacts import load_classifier
    from student.finetune_data import multi_views
    from student.protocols import view_aggregation

    cfg = load_config(overrides=overrides)
    graph = StageGraph(cfg, work)
    root = graph.synthetic().out_dir(work) / SWAPPED_DIR
    listing = root / "lists" / f"test_split{cfg.dataset(cfg.finetune.dataset).split}.txt"
    if not listing.is_file():
        return None
    model, info = load_classifier(graph.finetune().out_dir(work) / "classifier.pt")
    aggregate = view_aggregation((info.get("protocol") or {}).get("name"))
    hits = total = 0
    with torch.no_grad():
        for line in listing.read_text().splitlines():
            vid, n, label = line.split()
            views = multi_views(png_frames(root / "frames" / vid), int(n), int(info["clip_len"]),
                                int(info["input_size"]), cfg.evaluate.clips, 1)
            logits = model(views)
            score = logits.mean(0) if aggregate == "logits" else torch.softmax(logits, 1).mean(0)
            hits += int(int(score.argmax()) == int(label))
            total += 1
    return 100.0 * hits / total if total else None


def cam_figure(work: Path, base: list[str], seed: int, out: Path, videos: int = 4) -> Path | None:
    """w/o KD and full CAMs side by side on the same test clips (paper Fig. 3)."""
    from data_manifests.manifest import load_manifest
    from pipeline.core.charts import write_png
    from student.finetune import load_classifier
    from student.human_focus import cam_comparison

    models: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name, label in (("wo_kd", "w/o KD"), ("full", "full")):
        overrides = base + [f"pretrain.seed={seed}", f"finetune.seed={seed}"] + VARIANTS[name]
        path = StageGraph(load_config(overrides=overrides), work).finetune().out_dir(work) / "classifier.pt"
        if not path.is_file():
            return None
        models[label], info = load_classifier(path)
    graph = StageGraph(load_config(overrides=base), work)
    manifest = load_manifest(graph.manifest(graph.cfg.finetune.dataset).out_dir(work))
    test = [e for e in manifest.entries if e.split == "test"]
    picks = [manifest.abspath(e) for e in test[::max(len(test) // videos, 1)][:videos]]
    image = cam_comparison(models, picks, int(info["clip_len"]), int(info["input_size"]))
    return write_png(out, image)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant: mean ± sample std over seeds of every figure, and for each of :data:`PAIRED` the
    paired difference to ``scratch`` (same seed, same test videos) with its 95 % t-interval."""
    summary: dict[str, dict] = {}
    keys = ("top1", "top5", "top1_swapped", "drop", "human_focus", "batch_acc_rsp", "batch_acc_avid",
            *[p + k for p in ("heldout_", "untrained_") for k in HELDOUT])
    for name in variants:
        rows = [r for r in runs if r["variant"] == name]
        if not rows:
            continue
        entry: dict = {"n": len(rows), "seeds": [r["seed"] for r in rows]}
        for key in keys:
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                m, sd = mean_std(vals)
                entry[f"{key}_mean"], entry[f"{key}_std"] = round(m, 4), round(sd, 4)
        if name != "scratch":
            for key in PAIRED:
                d = paired(runs, name, "scratch", key)
                if d:
                    entry[f"{key}_minus_scratch"] = d
        summary[name] = entry
    return summary


def paired(runs: list[dict], a: str, b: str, key: str) -> dict | None:
    """``a − b`` per seed (both variants run with that seed) for ``key``: n, mean, 95 % t-interval."""
    by_seed = {r["seed"]: r for r in runs if r["variant"] == b and r.get(key) is not None}
    diffs = [r[key] - by_seed[r["seed"]][key] for r in runs
             if r["variant"] == a and r["seed"] in by_seed and r.get(key) is not None]
    if not diffs:
        return None
    ci = mean_interval(diffs)
    return {"n": len(diffs), "mean": round(statistics.fmean(diffs), 3),
            "ci95": [round(ci[1], 3), round(ci[2], 3)] if ci else None,
            "significant": bool(ci and (ci[1] > 0 or ci[2] < 0))}


def fmt_paired(d: dict | None, scale: float = 1.0) -> str:
    """A :func:`paired` result as "mean [lo, hi]" (``*`` when the interval excludes 0); "" without one."""
    if not d:
        return ""
    if not d["ci95"]:
        return f"{scale * d['mean']:+.1f}"
    lo, hi = (scale * v for v in d["ci95"])
    return f"{scale * d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]{'*' if d['significant'] else ''}"


def table_rows(summary: dict[str, dict]) -> list[dict]:
    def ms(s: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
        if f"{key}_mean" not in s:
            return ""
        return f"{scale * s[f'{key}_mean']:.{digits}f} ± {scale * s[f'{key}_std']:.{digits}f}"

    def pretext(s: dict, key: str) -> str:
        a, b = ms(s, "heldout_" + key, 1.0, 2), ms(s, "untrained_" + key, 1.0, 2)
        return f"{a} (untr. {b})" if a else ""

    return [{"variant": LABELS[name], "n": s["n"], "top-1 in-dist": ms(s, "top1"),
             "top-1 swapped": ms(s, "top1_swapped"), "drop": ms(s, "drop"),
             "focus %": ms(s, "human_focus", 100.0),
             **{f"{label} vs scratch [95% CI]": fmt_paired(s.get(f"{key}_minus_scratch"), scale)
                for key, label, scale in PAIRED_COLUMNS},
             "held-out RSP": pretext(s, "rsp_acc"), "held-out A-VID top-1": pretext(s, "avid_top1"),
             "held-out KD person IoU": pretext(s, "kd_person_iou"),
             "held-out KD part mIoU": pretext(s, "kd_part_miou")}
            for name, s in summary.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="seed values (each sets pretrain.seed and finetune.seed)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra config overrides for every run")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("PIPELINE_BENCH_WORK", "/tmp/pipeline-bench"))
                    / "ablation")
    ap.add_argument("--jobs", type=int, default=2, help="variants run at once (each with 2 // jobs torch threads)")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a failed `pipeline run` (they resume)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/ablation_synthetic"
                    "[_quick].json)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 pretraining steps, 2 seeds, "
                    "scratch and full")
    ap.add_argument("--redraw", type=Path, default=None, metavar="JSON",
                    help="only print the tables and draw the figure of a result JSON (figure next to it, same stem)")
    args = ap.parse_args()
    if args.redraw is not None:
        result = json.loads(args.redraw.read_text())["figures"]
        saved, chance = result["runs"], result.get("chance_top1")
        variants = [v for v in VARIANTS if any(r["variant"] == v for r in saved)]
        print_tables(saved, variants, result.get("classes") or 1, sorted({r["seed"] for r in saved}))
        written = draw(saved, args.redraw.with_suffix(""), chance)
        print(f"wrote {', '.join(map(str, written))}")
        return
    seeds = args.seeds[:2] if args.quick else args.seeds
    if args.quick and args.variants == list(VARIANTS):
        args.variants = QUICK_VARIANTS
    base = (QUICK if args.quick else []) + args.extra
    work = args.work / ("quick" if args.quick else "default")
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides=base)
    out = args.out or RESULTS / ("ablation_synthetic_quick.json" if args.quick else "ablation_synthetic.json")
    threads = max(1, 2 // max(args.jobs, 1))
    bench = Bench("ablation_synthetic", "small-scale Table 2: scratch vs KD only vs w/o KD vs TI vs full, synthetic "
                  "HMDB51-style split 1 (video-level accuracy, %; human focus = CAM mass on the person, %)", {
                      "seeds": seeds, "overrides": base, "quick": args.quick, "variants": args.variants,
                      "jobs": args.jobs, "threads_per_job": threads,
                      "config": {s: cfg.to_dict()[s] for s in ("synthetic", "clips", "model", "pretrain", "finetune",
                                                               "evaluate")},
                      "work": str(work)})

    # The shared data stages first, alone (two runs must not build the same stage at once).
    t0 = time.perf_counter()
    pipeline_command(work, base, ["teacher-cache", "--build-upstream"], log_dir / "data.log", args.retries, 2)
    pipeline_command(work, base, ["manifest", "--dataset", cfg.finetune.dataset, "--build-upstream"],
                     log_dir / "data.log", args.retries, 2)
    data_s = time.perf_counter() - t0

    runs: list[dict] = []
    lock = threading.Lock()

    def write(complete: bool) -> None:
        classes = load_classes(work, base)
        bench.write({"complete": complete, "summary": summarise(runs, args.variants), "runs": runs,
                     "data_stages_s": round(data_s, 1),
                     "test_videos": runs[0]["videos"] if runs else 0, "classes": len(classes),
                     "chance_top1": round(100.0 / len(classes), 2) if classes else None,
                     "chance_top5": round(100.0 * min(5, len(classes)) / len(classes), 2) if classes else None},
                    out=out, notes=NOTES)

    def one(job: tuple[int, str]) -> None:
        seed, name = job
        overrides = base + [f"pretrain.seed={seed}", f"finetune.seed={seed}"] + VARIANTS[name]
        metrics, wall, attempts = run_variant(work, overrides, log_dir, f"{name}-seed{seed}", args.retries, threads)
        swapped = swapped_top1(work, overrides)
        top1 = round(100 * metrics["video_top1"], 3)
        record = {"variant": name, "seed": seed, "top1": top1,
                  "top1_swapped": None if swapped is None else round(swapped, 3),
                  "drop": None if swapped is None else round(top1 - swapped, 3),
                  "top5": round(100 * metrics["video_top5"], 3), "clip_top1": round(100 * metrics["clip_top1"], 3),
                  "human_focus": metrics.get("human_focus"), "person_area": metrics.get("person_area"),
                  "videos": metrics["num_videos"], "wall_s": round(wall, 1), "attempts": attempts,
                  "stage_build_s": stage_seconds(work, overrides), **pretext_final(work, overrides)}
        with lock:
            runs.append(record)
            focus = f"{100 * record['human_focus']:.1f}" if record["human_focus"] is not None else "-"
            sw = f"{record['top1_swapped']:.1f}" if record["top1_swapped"] is not None else "-"
            print(f"{name:8s} seed {seed}: top-1 {record['top1']:.1f}  swapped {sw}  top-5 {record['top5']:.1f}  "
                  f"focus {focus}  held-out KD IoU {record.get('heldout_kd_person_iou', '-')}  ({wall:.0f} s)",
                  flush=True)
            write(complete=False)

    # the paper's comparison (full vs scratch) first in each seed, so a partial run already answers it
    order = sorted(args.variants, key=lambda v: ("full", "scratch", "wo_kd", "kd_only", "ti").index(v))
    jobs = [(seed, name) for seed in seeds for name in order]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(one, jobs))
    runs.sort(key=lambda r: (r["seed"], args.variants.index(r["variant"])))
    write(complete=True)
    n_cls = len(load_classes(work, base))
    chance = round(100.0 / n_cls, 2) if n_cls else None
    print(f"figure: {', '.join(map(str, draw(runs, out.with_suffix(''), chance)))}")
    if not args.quick and {"wo_kd", "full"} <= set(args.variants):
        cams = cam_figure(work, base, seeds[0], RESULTS / "ablation_cams.png")
        if cams:
            print(f"CAMs of w/o KD and full side by side: {cams}")
    print_tables(runs, args.variants, n_cls or 1, seeds)


def print_tables(runs: list[dict], variants: list[str], n_cls: int, seeds: list[int]) -> None:
    """The three tables (both test sets, paired differences to scratch, held-out pretext figures), then
    full against each other pretrained variant that ran (``FULL_AGAINST``)."""
    rows = table_rows(summarise(runs, variants))
    first = ["variant", "n", "top-1 in-dist", "top-1 swapped", "drop", "focus %"]
    title = (f"video-level top-1 (%) on the synthetic HMDB51-style split 1 ({runs[0]['videos'] if runs else 0} test "
             f"videos, {n_cls} classes: chance {100 / n_cls:.0f}) and on its scene-swapped copy; mean ± std over "
             f"seeds {seeds}")
    print_table(rows, first, title=title)
    print_table(rows, ["variant"] + [c for c in rows[0] if c.startswith("Δ")] if rows else None,
                title="paired differences to scratch (same seed): mean [95 % t-interval], * = excludes 0")
    print_table(rows, ["variant"] + [c for c in rows[0] if c.startswith("held-out")] if rows else None,
                title="held-out pretext figures (student/pretext_eval.py), trained (untrained network)")
    rows_full = []
    for other, meaning in FULL_AGAINST:
        if {"full", other} <= set(variants):
            out = {"comparison": f"full − {LABELS[other]}", "what it isolates": meaning}
            for key, label, scale in PAIRED_COLUMNS:
                out[f"{label} [95% CI]"] = fmt_paired(paired(runs, "full", other, key), scale)
            rows_full.append(out)
    print_table(rows_full, title="full against each other pretrained variant, paired by seed: mean [95 % t-interval], "
                "* = excludes 0")


def draw(runs: list[dict], out_stem: Path, chance_top1: float | None) -> list[Path]:
    """Bars (mean over seeds, 95 % t-interval, one dot per seed) of both test sets' top-1, the drop and
    human focus, per variant: ``out_stem``.png / .svg."""
    from pipeline.figures import ablation_figure

    rows = [{**r, "human_focus_pct": None if r.get("human_focus") is None else 100 * r["human_focus"]} for r in runs]
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    chance = {"top1": chance_top1, "top1_swapped": chance_top1} if chance_top1 else {}
    return ablation_figure(rows, out_stem, metrics=("top1", "top1_swapped", "drop", "human_focus_pct"),
                           labels=LABELS, chance=chance,
                           ylabels={"top1": "top-1 in-distribution (%)", "top1_swapped": "top-1 scene-swapped (%)",
                                    "drop": "drop (points)", "human_focus_pct": "CAM mass on the person (%)"})


def load_classes(work: Path, base: list[str]) -> list[str]:
    """The finetuning manifest's class list (for the chance level)."""
    graph = StageGraph(load_config(overrides=base), work)
    meta = graph.manifest(graph.cfg.finetune.dataset).out_dir(work) / "meta.json"
    return json.loads(meta.read_text()).get("classes", []) if meta.is_file() else []


NOTES = [
    "std is the sample standard deviation over seeds (n-1); 95 % intervals of paired differences use Student's t "
    "with n-1 degrees of freedom.",
    "drop = top-1 in-distribution - top-1 scene-swapped (same videos, backgrounds of another class).",
    "seeds change pretraining and finetuning initialisation/order/augmentation; data and test videos are fixed.",
    "scratch does not depend on pretrain.seed; its seed is the finetune seed paired with the other variants.",
    "human focus: share of the predicted class's CAM mass inside the person's exact mask on the centred test clip, "
    "mean over test videos; person_area is the share of the frame the person covers (a uniform CAM scores that).",
    "held-out figures: student/pretext_eval.py on the pretraining set's held-out videos (chance: RSP 0.5, A-VID "
    "1/gallery); batch_acc_*: the last epoch's training-batch means (diagnostics only).",
]


if __name__ == "__main__":
    main()
