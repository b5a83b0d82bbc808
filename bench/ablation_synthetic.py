"""A small-scale version of the paper's Table 2 on the synthetic data.

Variants (each finetuned on the HMDB51-style split 1 and tested there, video-level top-1 / top-5):
  scratch  finetune from random initialisation (no pretraining)
  wo_kd    pretraining without the human-prior distillation branch (model.kd = false)
  ti       task-independent: one high-level encoder shared by every head (model.task_dependent = false)
  full     the paper's model

Every run goes through the real stages (``pipeline run`` in a subprocess) in one work directory, so
the synthetic data, manifests and teacher cache are built once and shared. Seeds vary pretraining and
finetuning (``pretrain.seed``, ``finetune.seed``); the data stay fixed.

    python bench/ablation_synthetic.py                 # the demo config, 3 seeds
    python bench/ablation_synthetic.py --seeds 0 1     # fewer seeds
    python bench/ablation_synthetic.py --quick         # smoke run: tiny sizes, 1 seed
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Bench, print_table  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402

VARIANTS = {
    "scratch": ["finetune.from_scratch=true",
                'run.stages=["synthetic", "manifest", "finetune", "evaluate"]'],
    "wo_kd": ["model.kd=false"],
    "ti": ["model.task_dependent=false"],
    "full": [],
}
QUICK = ["synthetic.kinetics_per_class=4", "synthetic.hmdb_per_class=4", "synthetic.ucf_per_class=2",
         "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2", "finetune.epochs=1"]


def run_variant(work: Path, overrides: list[str], log_dir: Path, tag: str) -> tuple[dict, float]:
    """One ``pipeline run``; returns the evaluate stage's metrics and the wall time."""
    exe = Path(sys.executable).parent / "pipeline"
    args = [str(exe), "--work-dir", str(work)]
    for item in overrides:
        args += ["--set", item]
    t0 = time.perf_counter()
    with open(log_dir / f"{tag}.log", "w") as log:
        proc = subprocess.run(args + ["run"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: pipeline run failed (exit {proc.returncode}); see {log_dir / (tag + '.log')}")
    ev = StageGraph(load_config(overrides=overrides), work).evaluate().out_dir(work)
    return json.loads((ev / "metrics.json").read_text()), wall


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra config overrides for every run")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("PIPELINE_BENCH_WORK", "/tmp/pipeline-bench"))
                    / "ablation")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    base = (QUICK if args.quick else []) + args.extra
    work = args.work / ("quick" if args.quick else "default")
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides=base)
    bench = Bench("ablation_synthetic", "small-scale Table 2: scratch vs w/o KD vs TI vs full, synthetic "
                  "HMDB51-style split 1", {
                      "seeds": seeds, "overrides": base, "quick": args.quick, "variants": args.variants,
                      "backbone": cfg.model.backbone, "width": cfg.model.width, "input_size": cfg.model.input_size,
                      "clip_len": cfg.clips.clip_len, "pretrain_epochs": cfg.pretrain.epochs,
                      "finetune_epochs": cfg.finetune.epochs, "work": str(work)})

    runs = []
    for seed in seeds:
        for name in args.variants:
            overrides = base + [f"pretrain.seed={seed}", f"finetune.seed={seed}"] + VARIANTS[name]
            metrics, wall = run_variant(work, overrides, log_dir, f"{name}-seed{seed}")
            runs.append({"variant": name, "seed": seed, "top1": 100 * metrics["video_top1"],
                         "top5": 100 * metrics["video_top5"], "videos": metrics["num_videos"],
                         "wall_s": round(wall, 1)})
            print(f"{name:8s} seed {seed}: top-1 {runs[-1]['top1']:.1f}  top-5 {runs[-1]['top5']:.1f}  "
                  f"({wall:.0f} s)", flush=True)

    summary = {}
    for name in args.variants:
        rows = [r for r in runs if r["variant"] == name]
        t1, s1 = mean_std([r["top1"] for r in rows])
        t5, s5 = mean_std([r["top5"] for r in rows])
        summary[name] = {"top1_mean": round(t1, 2), "top1_std": round(s1, 2), "top5_mean": round(t5, 2),
                         "top5_std": round(s5, 2), "n": len(rows)}
    rows = [{"variant": k, "top-1 mean": v["top1_mean"], "top-1 std": v["top1_std"], "top-5 mean": v["top5_mean"],
             "top-5 std": v["top5_std"], "n": v["n"]} for k, v in summary.items()]
    out = RESULTS / ("ablation_synthetic_quick.json" if args.quick else "ablation_synthetic.json")
    bench.write({"summary": summary, "runs": runs, "test_videos": runs[0]["videos"] if runs else 0}, out=out)
    print_table(rows, title="video-level accuracy (%) on the synthetic HMDB51-style split 1")


if __name__ == "__main__":
    main()
