"""Where the demo's minutes go: each stage's build time, and the pretraining step taken apart.

From a work directory where ``pipeline run`` finished (the demo's configuration):

- every stage's build seconds (its ``stage.json``), the stages' sum;
- the pretraining loader's cost per batch in one process and one thread (a DataLoader worker's
  view: decode, crops, colour jitter, teacher target), and the share of it each part takes
  (cProfile, cumulative time of the named functions);
- one training step's compute (forward, backward, optimizer) on batches already loaded, at the
  process's default thread count (as the pretrain stage runs it);
- the held-out evaluation's cost per clip (the contrastive pass, eval mode, as
  ``student.pretext_eval`` runs it) and the number of clip passes one evaluation makes.

The process makes the CPU settings a ``pipeline`` process makes (pipeline/core/cpu_tuning.py).

    python bench/demo_budget.py --work WORK [--batches 6]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from pipeline.core.cpu_tuning import tune_process  # noqa: E402

tune_process(os.environ)  # the CPU settings of a `pipeline` process, before torch loads

import torch  # noqa: E402

from pretrain_setup import load_pretrain_data  # noqa: E402
from student import pretext_eval  # noqa: E402
from student.optim import build_adamw  # noqa: E402
from student.pretrain import avid_key_clip, batch_clips, build_pretrain_model  # noqa: E402

LOADER_PARTS = {"decode": "read_frames", "colour jitter": "_colour", "crop and resize": "_resize",
                "teacher target": "target"}


def stage_seconds(work: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(work.glob("*/*/*/stage.json")):
        record = json.loads(path.read_text())
        rows.append({"stage": f"{path.parts[-4]}/{path.parts[-3]}", "build_s": record["timings"]["build_s"]})
    return rows


def loader_cost(data: Any, batches: int) -> tuple[float, dict[str, float], list[dict[str, Any]]]:
    """Seconds per batch in this process at one thread, the parts' shares, and the batches."""
    torch.set_num_threads(1)
    data.sampler.set_epoch(0, start=0)
    it = iter(data.loader)
    next(it)  # warm-up
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    loaded = [next(it) for _ in range(batches)]
    profile.disable()
    per_batch = (time.perf_counter() - t0) / batches
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())  # self time of everything profiled
    shares = {}
    for part, name in LOADER_PARTS.items():
        cum = sum(v[3] for (_, _, fn), v in stats.items() if fn == name)
        shares[part] = round(cum / total, 3) if total else None
    return per_batch, shares, loaded


def step_cost(cfg: Any, data: Any, loaded: list[dict[str, Any]], threads: int) -> float:
    torch.set_num_threads(threads)
    pm = build_pretrain_model(cfg.model, cfg.pretrain, len(data.label_names), cfg.pretrain.batch_size).train()
    opt = build_adamw(pm.student, cfg.pretrain.lr, cfg.pretrain.weight_decay, cfg.pretrain.slow_modules,
                      cfg.pretrain.slow_lr_ratio)
    cpu = torch.device("cpu")

    def step(batch: dict[str, Any]) -> None:
        q, kp, kn = batch_clips(batch, cpu, "cpu", torch.contiguous_format)
        out = pm(q, kp, kn, batch["target"], batch["video_index"], avid_key_clip(batch, cpu, "cpu",
                                                                                  torch.contiguous_format))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    step(loaded[0])  # warm-up
    t0 = time.perf_counter()
    for batch in loaded[1:]:
        step(batch)
    return (time.perf_counter() - t0) / (len(loaded) - 1)


def eval_cost(cfg: Any, data: Any, threads: int, clips: int = 128) -> float:
    torch.set_num_threads(threads)
    student = build_pretrain_model(cfg.model, cfg.pretrain, len(data.label_names), 1).student.eval()
    x = torch.randint(0, 255, (clips, 3, cfg.clips.clip_len, cfg.model.input_size, cfg.model.input_size),
                      dtype=torch.uint8)
    run = lambda: pretext_eval._forward(student, x, torch.device("cpu"), 32, torch.no_grad, parsing=False)  # noqa: E731
    run()
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) / clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a work directory where `pipeline run` finished")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "demo_budget.json")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    bench = common.Bench("demo_budget", "the demo's stage times and its pretraining step taken apart",
                         {"work": str(args.work), "batches": args.batches, "overrides": args.overrides,
                          "threads": threads})
    stages = stage_seconds(args.work)
    cfg, data = load_pretrain_data(args.work, ["pretrain.workers=0", *args.overrides])
    per_batch, shares, loaded = loader_cost(data, args.batches)
    per_step = step_cost(cfg, data, loaded, threads)
    per_clip = eval_cost(cfg, data, threads)
    views = cfg.pretrain.heldout_views
    passes = 5 * views  # RSP: query, key_pos, key_neg; A-VID: query and key in colour; per video and view
    figures = {
        "stages": stages, "stages_sum_s": round(sum(r["build_s"] for r in stages), 1),
        "steps": data.total_steps, "batch_size": cfg.pretrain.batch_size,
        "loader_s_per_batch_one_thread": round(per_batch, 3), "loader_shares": shares,
        "step_compute_s": round(per_step, 3), "step_threads": threads,
        "loop_compute_s": round(per_step * data.total_steps, 1),
        "loop_loader_core_s": round(per_batch * data.total_steps, 1),
        "heldout_ms_per_clip": round(1000 * per_clip, 2), "heldout_clip_passes_per_video": passes,
    }
    common.print_table(stages, title="stage build seconds (stage.json)")
    common.print_table([{"part": "training step compute", "per step s": figures["step_compute_s"],
                         "whole run s": figures["loop_compute_s"], "threads": threads},
                        {"part": "loader (one worker thread)", "per step s": figures["loader_s_per_batch_one_thread"],
                         "whole run s": figures["loop_loader_core_s"], "threads": 1}],
                       title=f"pretraining, {data.total_steps} steps of {cfg.pretrain.batch_size}")
    print(f"loader shares: {shares}")
    print(f"held-out evaluation: {figures['heldout_ms_per_clip']} ms per clip pass, {passes} passes per video "
          f"({views} views), plus the parsing pass once per video")
    bench.write(figures, args.out)


if __name__ == "__main__":
    main()
