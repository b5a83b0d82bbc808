"""A small-scale version of the paper's Table 2 on the synthetic data, with the paper's Fig. 3 measured.

Variants (each finetuned on the HMDB51-style split 1 and tested there, video-level top-1 / top-5):
  scratch  finetune from random initialisation (no pretraining)
  kd_only  pretraining with the human-prior distillation alone (pretrain.lambda_m = lambda_a = 0)
  wo_kd    pretraining without the human-prior distillation branch (model.kd = false): RSPNet
  ti       task-independent: one high-level encoder shared by every head (model.task_dependent = false)
  full     the paper's model

Beside accuracy, each run reports the human-focus score (student/human_focus.py): the share of the
classifier's class-activation-map mass that falls inside the person's exact mask, mean over the
test videos (the person covers ``person_area`` of the frame: a uniform map would score that). The
CAMs of w/o KD and full (first seed) on the same test clips are drawn side by side in
bench/results/ablation_cams.png.

Every run goes through the real stages (``pipeline run`` in a subprocess) in one work directory, so
the synthetic data, manifests and teacher cache are built once (first, alone) and shared, and a run
that is already built is only collected. Seeds vary pretraining and finetuning (``pretrain.seed``,
``finetune.seed``); the data stay fixed, so the test videos are the same for every run and
``full − scratch`` etc. are also reported paired by seed. ``--jobs 2`` runs two variants at once,
one torch thread each (the same throughput as one at a time on 2 cores, less idle time). The JSON
is rewritten after every run (``"complete": false`` until the last), so an interrupted benchmark
keeps what it measured; a failed ``pipeline run`` is retried and its stages resume.

    python bench/ablation_synthetic.py --work /tmp/abl   # the demo config, seeds 0 1 2 (~45 min, 2 cores)
    python bench/ablation_synthetic.py --seeds 0 1       # other seeds
    python bench/ablation_synthetic.py --quick           # smoke run: tiny sizes, 1 seed (~2 min)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Bench, print_table  # noqa: E402

from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402

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
         "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2", "finetune.epochs=1"]


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
    exe = Path(sys.executable).parent / "pipeline"
    args = [str(exe), "--work-dir", str(work)]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for attempt in range(1, retries + 2):
        with open(log_path, "a") as log:
            log.write(f"\n=== attempt {attempt}: {' '.join(args + command)}\n")
            log.flush()
            proc = subprocess.run(args + command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def pretext_final(work: Path, overrides: list[str]) -> dict[str, float]:
    """The last epoch's pretext accuracies and the queue size, from the pretraining metrics.jsonl."""
    cfg = load_config(overrides=overrides)
    if cfg.finetune.from_scratch:
        return {}
    path = StageGraph(cfg, work).pretrain().out_dir(work) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    epochs = [r for r in rows if r.get("event") == "epoch"]
    start = next((r for r in rows if r.get("event") == "start"), {})
    if not epochs:
        return {}
    last = epochs[-1]
    return {"acc_rsp": last["acc_rsp"], "acc_avid": last["acc_avid_pos"], "queue_size": start.get("queue_size"),
            "loss_kd": last["loss_kd"]}


def cam_figure(work: Path, base: list[str], seed: int, out: Path, videos: int = 4) -> Path | None:
    """w/o KD and full CAMs side by side on the same test clips (paper Fig. 3)."""
    from data_manifests.manifest import load_manifest
    from pipeline.core.charts import write_png
    from student.finetune import load_classifier
    from student.human_focus import cam_comparison

    models, info = {}, {}
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
    """Per variant: mean ± sample std over seeds of top-1 / top-5 / human focus, and the paired
    difference to ``scratch`` (same seed, same test videos) where both ran."""
    summary: dict[str, dict] = {}
    scratch = {r["seed"]: r for r in runs if r["variant"] == "scratch"}
    for name in variants:
        rows = [r for r in runs if r["variant"] == name]
        if not rows:
            continue
        entry: dict = {"n": len(rows), "seeds": [r["seed"] for r in rows]}
        for key in ("top1", "top5", "human_focus", "acc_rsp", "acc_avid"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                m, sd = mean_std(vals)
                entry[f"{key}_mean"], entry[f"{key}_std"] = round(m, 3), round(sd, 3)
        paired = [r["top1"] - scratch[r["seed"]]["top1"] for r in rows if r["seed"] in scratch]
        if name != "scratch" and paired:
            d, sd = mean_std(paired)
            entry.update(top1_minus_scratch_mean=round(d, 2), top1_minus_scratch_std=round(sd, 2),
                         top1_minus_scratch_n=len(paired))
        summary[name] = entry
    return summary


def table_rows(summary: dict[str, dict]) -> list[dict]:
    def ms(s: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
        if f"{key}_mean" not in s:
            return ""
        return f"{scale * s[f'{key}_mean']:.{digits}f} ± {scale * s[f'{key}_std']:.{digits}f}"

    return [{"variant": LABELS[name], "top-1": ms(s, "top1"), "top-5": ms(s, "top5"),
             "human focus (%)": ms(s, "human_focus", 100.0),
             "top-1 − scratch (paired)": (f"{s['top1_minus_scratch_mean']:+.1f} ± {s['top1_minus_scratch_std']:.1f}"
                                          if "top1_minus_scratch_mean" in s else ""),
             "RSP acc": ms(s, "acc_rsp", 1.0, 2), "A-VID top-1": ms(s, "acc_avid", 1.0, 2), "n": s["n"]}
            for name, s in summary.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
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
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 pretraining step pair, 1 seed")
    args = ap.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
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
        record = {"variant": name, "seed": seed, "top1": round(100 * metrics["video_top1"], 3),
                  "top5": round(100 * metrics["video_top5"], 3), "clip_top1": round(100 * metrics["clip_top1"], 3),
                  "human_focus": metrics.get("human_focus"), "person_area": metrics.get("person_area"),
                  "videos": metrics["num_videos"], "wall_s": round(wall, 1), "attempts": attempts,
                  "stage_build_s": stage_seconds(work, overrides), **pretext_final(work, overrides)}
        with lock:
            runs.append(record)
            focus = f"{100 * record['human_focus']:.1f}" if record["human_focus"] is not None else "-"
            print(f"{name:8s} seed {seed}: top-1 {record['top1']:.1f}  top-5 {record['top5']:.1f}  "
                  f"focus {focus}  ({wall:.0f} s)", flush=True)
            write(complete=False)

    # the paper's comparison (full vs scratch) first in each seed, so a partial run already answers it
    order = sorted(args.variants, key=lambda v: ("full", "scratch", "wo_kd", "kd_only", "ti").index(v))
    jobs = [(seed, name) for seed in seeds for name in order]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(one, jobs))
    runs.sort(key=lambda r: (r["seed"], args.variants.index(r["variant"])))
    write(complete=True)
    if not args.quick and {"wo_kd", "full"} <= set(args.variants):
        cams = cam_figure(work, base, seeds[0], RESULTS / "ablation_cams.png")
        if cams:
            print(f"CAMs of w/o KD and full side by side: {cams}")
    n_cls = len(load_classes(work, base)) or 1
    print_table(table_rows(summarise(runs, args.variants)),
                title=f"video-level accuracy (%) on the synthetic HMDB51-style split 1 "
                      f"({runs[0]['videos'] if runs else 0} test videos, {n_cls} classes: chance top-1 "
                      f"{100 / n_cls:.0f}, top-5 {100 * min(5, n_cls) / n_cls:.0f}); mean ± std over seeds {seeds}")


def load_classes(work: Path, base: list[str]) -> list[str]:
    """The finetuning manifest's class list (for the chance level)."""
    graph = StageGraph(load_config(overrides=base), work)
    meta = graph.manifest(graph.cfg.finetune.dataset).out_dir(work) / "meta.json"
    return json.loads(meta.read_text()).get("classes", []) if meta.is_file() else []


NOTES = [
    "std is the sample standard deviation over seeds (n-1); with 3 seeds it is itself very uncertain.",
    "seeds change pretraining and finetuning initialisation/order/augmentation; data and test videos are fixed.",
    "scratch does not depend on pretrain.seed; its seed is the finetune seed paired with the other variants.",
    "human focus: share of the predicted class's CAM mass inside the person's exact mask on the centred test clip, "
    "mean over test videos; person_area is the share of the frame the person covers (a uniform CAM scores that).",
    "RSP acc / A-VID top-1: the last pretraining epoch's means (chance 0.5 and 1/(queue_size+1)).",
]


if __name__ == "__main__":
    main()
