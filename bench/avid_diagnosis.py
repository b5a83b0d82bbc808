"""Why does the appearance task (A-VID) not improve on held-out videos in the demo?

Trains the whole pretraining model (student/pretrain_model.py: KD + RSP + A-VID, the run's loss weights)
from the demo's initialisation on the demo's pretraining clips (a built work directory: ``pipeline
teacher-cache``), once per setting, and measures every ``--every`` steps:

- held-out RSP and A-VID top-1 (student/pretext_eval.py: 140 Kinetics-style val videos; A-VID with
  RSPNet's independent colour jitter on query and key, gallery 140, chance 0.007);
- the training-batch A-VID loss (``ce(k+) + ce(k-)``; ``2 ln(queue + 1)`` when the A-VID embedding has
  collapsed to one point) and RSP accuracy, averaged over the last ``--every`` steps;
- held-out A-VID top-1 WITHOUT colour jitter (own crops and flips only): the videos' own colours are
  appearance too, and an untrained network already retrieves about half of them by it;
- the spread of the A-VID embeddings of the held-out queries (mean pairwise cosine; 1 = collapsed).

``--pretrained DIR ...`` measures finished pretraining outputs instead (each ``student.pt`` loaded whole;
e.g. the ablation's ``WORK/default/pretrain/kinetics400/*``) beside the untrained network of each seed.

A setting is ``name=key=value,key=value`` (config overrides on top of the demo's, ``pretrain.*``/``model.*``),
plus prototypes that came before the pipeline options ``pretrain.avid_own_colour`` and
``pretrain.slow_modules`` (which the bench also takes): ``bench.avid_key=own`` (A-VID on its own key,
the positive key re-coloured with another item's colour draw; RSP on the shared-colour keys),
``bench.slow=h_c+g_a,bench.slow_lr=LR`` (those student modules at their own learning rate;
``bench.avid_head_lr=LR`` and ``bench.contrastive_lr=LR`` name g_a and h_c+g_m+g_a), ``bench.warmup=N``
(linear warm-up over N steps) and ``bench.schedule=cosine`` (then the pipeline's cosine decay; default: constant).

    python -m pipeline.cli --work-dir /tmp/w teacher-cache --build-upstream
    python bench/avid_diagnosis.py --work /tmp/w        # the default settings, 150 steps each
    python bench/avid_diagnosis.py --work /tmp/abl/default --pretrained /tmp/abl/default/pretrain/kinetics400/*
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Bench, print_table  # noqa: E402
from pretrain_setup import heldout_set, load_pretrain_data  # noqa: E402

from student.artifacts import load_pretrained_student, model_config_from, pretrained_student  # noqa: E402
from student.gpu_augment import avid_key_clip, batch_clips, colour_batch  # noqa: E402
from student.optim import CosineFactor, build_adamw, build_sgd  # noqa: E402
from student.pretext_eval import HeldoutSet, _forward, evaluate_pretext, retrieval_top1  # noqa: E402
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402

DEFAULT_SETTINGS = [
    "demo=",
    "avid_only=pretrain.lambda_m=0,pretrain.lambda_kd=0,pretrain.lambda_a=1",
    "avid_only_lr3e-4=pretrain.lambda_m=0,pretrain.lambda_kd=0,pretrain.lambda_a=1,pretrain.lr=0.0003",
    "avid_only_indep_lr3e-4=pretrain.lambda_m=0,pretrain.lambda_kd=0,pretrain.lambda_a=1,pretrain.lr=0.0003,"
    "pretrain.shared_colour=false",
]


def avid_figures(student: torch.nn.Module, hs: HeldoutSet) -> dict[str, float]:
    """Held-out RSP and A-VID (RSPNet colour jitter, as in metrics.jsonl), A-VID without colour jitter, and
    the A-VID embeddings' spread (mean pairwise cosine of the queries; 1 = collapsed). Restores train mode.
    (The colour-free query and key clips also run inside ``evaluate_pretext``, which returns figures only:
    two extra forwards of the held-out clips per measurement, outside the training steps.)"""
    fig = evaluate_pretext(student, hs)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        q = _forward(student, hs.query, torch.device("cpu"), 32, contextlib.nullcontext)["emb_a"]
        k = _forward(student, hs.key_pos, torch.device("cpu"), 32, contextlib.nullcontext)["emb_a"]
    student.train(was_training)
    emb = F.normalize(q, dim=1)
    n = emb.shape[0]
    sim = emb @ emb.t()
    return {"heldout_rsp": float(fig["rsp_acc"] or 0.0), "heldout_avid": float(fig["avid_top1"] or 0.0),
            "heldout_avid_nocolour": round(retrieval_top1(q, k), 4),
            "avid_spread": round(float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))), 4)}


def own_key_clip(batch: dict) -> torch.Tensor:
    """The prototype's A-VID key (``bench.avid_key=own``): the positive key's frames and crop with the colour
    draw of another item of the batch (independent of this item's query). ``pretrain.avid_own_colour`` later
    made it a pipeline option with the key's own draw instead."""
    return colour_batch(batch["key_pos"], batch["query_colour"].roll(1, dims=0))


def measure_pretrained(work: Path, dirs: list[Path], bench: Bench, out: Path | None) -> None:
    """Finished pretraining outputs: each student beside the untrained network of its seed."""
    cfg, data = load_pretrain_data(work, ["pretrain.workers=0"])
    hs = heldout_set(cfg, data)
    figures: dict[str, dict] = {}
    rows: list[dict] = []
    for d in dirs:
        if not (d / "stage.json").exists():
            continue  # a lock file, or an unfinished (.partial) run
        student, meta = load_pretrained_student(d)
        pre = tomllib.loads((d / "config.toml").read_text()).get("pretrain", {})
        model = model_config_from(meta["model_config"])
        seed = int(pre.get("seed", 0))
        variant = ("kd_only" if pre.get("lambda_m", 1) == 0 and pre.get("lambda_a", 1) == 0 else
                   "wo_kd" if not model.kd else "ti" if not model.task_dependent else "full")
        seed_all(seed)  # the untrained network of this run: the pretrain stage seeds, then builds the student first
        untrained = pretrained_student(meta)
        figures[d.name] = {"variant": variant, "seed": seed, "trained": avid_figures(student, hs),
                           "untrained": avid_figures(untrained, hs)}
        t, u = figures[d.name]["trained"], figures[d.name]["untrained"]
        rows.append({"run": d.name, "variant": variant, "seed": seed,
                     "avid (untr.)": f"{t['heldout_avid']:.3f} ({u['heldout_avid']:.3f})",
                     "avid no colour (untr.)": f"{t['heldout_avid_nocolour']:.3f} ({u['heldout_avid_nocolour']:.3f})",
                     "spread (untr.)": f"{t['avid_spread']:.3f} ({u['avid_spread']:.3f})"})
        print(rows[-1], flush=True)
        bench.write(figures, out)
    rows.sort(key=lambda r: (r["variant"], r["seed"]))
    print_table(rows, title="held-out A-VID top-1 of finished pretraining runs (gallery 140, chance 0.007)")
    print(f"wrote {bench.write(figures, out)}")


def run(work: Path, overrides: list[str], steps: int, every: int, hs_cache: dict[str, HeldoutSet]) -> list[dict]:
    """One setting: train ``steps`` steps (constant lr unless bench.schedule=cosine), measuring at step 0 and
    every ``every`` steps."""
    own_key = "bench.avid_key=own" in overrides
    bench = dict(o[len("bench."):].split("=", 1) for o in overrides if o.startswith("bench."))
    slow_parts, slow_lr = bench.get("slow", ""), bench.get("slow_lr")
    if "avid_head_lr" in bench:  # the earlier prototypes' names
        slow_parts, slow_lr = "g_a", bench["avid_head_lr"]
    if "contrastive_lr" in bench:
        slow_parts, slow_lr = "h_c+g_m+g_a", bench["contrastive_lr"]
    warmup, cosine = int(bench.get("warmup", 0)), bench.get("schedule", "constant") == "cosine"
    overrides = [o for o in overrides if not o.startswith("bench.")]
    if own_key:
        overrides.append("pretrain.augment_device=gpu")  # uint8 clips + colour draws: the key is re-coloured here
    cfg, data = load_pretrain_data(work, overrides)
    if "hs" not in hs_cache:  # the held-out videos are the same for every setting: decoded once
        hs_cache["hs"] = heldout_set(cfg, data)
    hs = hs_cache["hs"]
    p = cfg.pretrain
    if p.avid_start_epoch:
        sys.exit("avid_diagnosis: pretrain.avid_start_epoch is not modelled by this bench's loop; measure it with "
                 "`pipeline pretrain` (its held-out records)")
    seed_all(p.seed)
    pm = build_pretrain_model(cfg.model, p, len(data.label_names), p.batch_size)
    slow, ratio = (slow_parts.split("+"), float(slow_lr) / p.lr) if slow_lr is not None else (p.slow_modules,
                                                                                              p.slow_lr_ratio)
    opt = (build_adamw(pm.student, p.lr, p.weight_decay, slow, ratio) if p.optimizer == "adamw" else
           build_sgd(pm.student, p.lr, p.momentum, p.weight_decay, slow, ratio))
    # bench.warmup=N: linear warm-up over N steps; bench.schedule=cosine: then the pipeline's cosine to the end
    decay = CosineFactor(max(steps - warmup, 1)) if cosine else (lambda k: 1.0)
    scheduler = LambdaLR(opt, lambda k: (k + 1) / warmup if k < warmup else decay(k - warmup))

    def measure(step: int, window: list[dict]) -> dict:
        row: dict = {"step": step, **avid_figures(pm.student, hs)}
        if window:
            for k in ("loss_avid", "acc_avid_pos", "acc_rsp", "loss_rsp"):
                row[f"train_{k}"] = round(sum(float(w[k]) for w in window) / len(window), 4)
        pm.train()
        return row

    curve = [measure(0, [])]
    batches = itertools.chain.from_iterable(iter(data.loader) for _ in range(10 ** 6))
    window: list[dict] = []
    pm.train()
    for step in range(1, steps + 1):
        batch = next(batches)
        target = batch["target"] if pm.kd else None
        q, kp, kn = batch_clips(batch, torch.device("cpu"), p.augment_device)
        ka = own_key_clip(batch) if own_key else avid_key_clip(batch, torch.device("cpu"), p.augment_device)
        out = pm(q, kp, kn, target, batch["video_index"], ka)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        scheduler.step()
        window.append({k: v.detach() for k, v in out.items()})
        if step % every == 0 or step == steps:
            curve.append(measure(step, window[-every:]))
            print(f"    step {step}: {curve[-1]}", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a work dir where `pipeline teacher-cache` was built")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="name=key=value,key=value")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every setting")
    ap.add_argument("--pretrained", type=Path, nargs="+", default=None,
                    help="measure these finished pretraining output dirs instead of training")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/avid_diagnosis.json)")
    args = ap.parse_args()
    if args.pretrained:
        bench = Bench("avid_diagnosis", "A-VID: held-out top-1 of finished pretraining runs and of their untrained "
                      "networks", {"pretrained": [str(d) for d in args.pretrained]})
        measure_pretrained(args.work, args.pretrained, bench, args.out)
        return
    bench = Bench("avid_diagnosis", "A-VID: held-out top-1 and embedding spread while pretraining, by setting",
                  {"steps": args.steps, "every": args.every, "overrides": args.overrides})
    figures: dict[str, dict] = {}
    rows: list[dict] = []
    hs_cache: dict[str, HeldoutSet] = {}
    for setting in args.settings:
        name, _, spec = setting.partition("=")
        overrides = ["pretrain.workers=1", *args.overrides, *[s for s in spec.split(",") if s]]
        print(f"{name}: {overrides}", flush=True)
        t0 = time.perf_counter()
        curve = run(args.work, overrides, args.steps, args.every, hs_cache)
        figures[name] = {"overrides": overrides, "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}
        end = curve[-1]
        rows.append({"setting": name, "avid untrained": curve[0]["heldout_avid"], "avid end": end["heldout_avid"],
                     "rsp untrained": curve[0]["heldout_rsp"], "rsp end": end["heldout_rsp"],
                     "no-colour untrained": curve[0]["heldout_avid_nocolour"],
                     "no-colour end": end["heldout_avid_nocolour"],
                     "spread untrained": curve[0]["avid_spread"], "spread end": end["avid_spread"],
                     "train loss_avid": end.get("train_loss_avid")})
        bench.write(figures, args.out)
    print_table(rows, title="held-out A-VID top-1 (chance 0.007) and RSP, untrained and at the end")
    print(f"wrote {bench.write(figures, args.out)}")


if __name__ == "__main__":
    main()
