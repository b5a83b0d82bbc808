"""The CLI's CPU settings (pipeline/core/cpu_tuning.py), off against on, on the demo's pretraining.

Runs ``pipeline pretrain`` (the demo's configuration, ``--epochs`` epochs, no held-out evaluation)
as a fresh process per run, alternately with the settings off and on (A B B A …), in one work
directory whose upstream stages (synthetic data, manifest, teacher cache) are built once first. Each
run's pretraining stage is deleted before the next, so every run trains from scratch.

- ``off``: ``PIPELINE_CPU_TUNING=0``: libgomp's default spin and glibc's default malloc thresholds,
  what every run got before;
- ``on``: nothing set: the CLI's defaults, ``OMP_WAIT_POLICY=PASSIVE`` and ``mallopt`` thresholds.

Per run: wall seconds of the process, its CPU seconds (user and system, the training process and its
DataLoader workers), its minor page faults and the stage's training rate (clips/s, evaluation
excluded). The final losses of every run must be equal (the settings change no kernel); the script
fails if they are not. This VM's speed drifts by up to a third over minutes, which is why the runs
alternate and the table gives each pair's ratio.

    python bench/cpu_tuning.py [--work /tmp/cpu] [--rounds 3] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from pipeline.core.cpu_tuning import MALLOC_KEYS, OPENMP_KEYS, SWITCH  # noqa: E402

TUNING_KEYS = (*OPENMP_KEYS, *MALLOC_KEYS, SWITCH)  # every variable the settings read, cleared between contenders
POLICIES = {"off": {"PIPELINE_CPU_TUNING": "0"}, "on": {}}


def _cli(work: Path, args: list[str], extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in TUNING_KEYS}
    env.update(extra_env)
    subprocess.run([sys.executable, "-m", "pipeline.cli", "--work-dir", str(work), *args], env=env,
                   cwd=common.REPO, check=True, stdout=subprocess.DEVNULL)


def _children_usage() -> tuple[float, float, int]:
    """(user, system seconds, minor page faults) of every waited-for child so far."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime, use.ru_stime, use.ru_minflt


def one_run(work: Path, policy: str, overrides: list[str]) -> dict[str, Any]:
    """Train once from scratch under ``policy``; its wall and CPU seconds, clips/s and final losses."""
    shutil.rmtree(work / "pretrain", ignore_errors=True)
    before, t0 = _children_usage(), time.perf_counter()
    _cli(work, [*overrides, "pretrain"], POLICIES[policy])
    wall = time.perf_counter() - t0
    user, system, faults = (b - a for a, b in zip(before, _children_usage()))
    (stage,) = (work / "pretrain").glob("*/*/stage.json")
    summary = json.loads(stage.read_text())["summary"]
    return {"policy": policy, "wall_s": round(wall, 2), "cpu_s": round(user + system, 2),
            "system_s": round(system, 2), "minor_faults": int(faults),
            "clips_per_s": summary["clips_per_s"], "final": summary["final"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=common.work_dir("cpu_tuning"))
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs (A B, then B A, ...)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=common.RESULTS / "cpu_tuning.json")
    args = ap.parse_args()
    overrides = ["--set", f"pretrain.epochs={args.epochs}", "--set", "pretrain.heldout_videos=0"]
    bench = common.Bench("cpu_tuning", "pipeline pretrain (demo config) with the CLI's CPU settings off "
                         "(PIPELINE_CPU_TUNING=0) and on, fresh process per run, interleaved",
                         {"epochs": args.epochs, "rounds": args.rounds, "policies": POLICIES,
                          "overrides": overrides, "threads": "torch default", "work": str(args.work)})
    _cli(args.work, ["teacher-cache", "--build-upstream"], {})
    runs = []
    for i, policy in enumerate(common.abba(list(POLICIES), args.rounds)):
        runs.append(one_run(args.work, policy, overrides))
        r = runs[-1]
        print(f"[cpu_tuning] run {i + 1}: {r['policy']:3s} {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} s CPU "
              f"({r['system_s']:.1f} system), {r['minor_faults']} page faults, {r['clips_per_s']:.2f} clips/s",
              flush=True)
    finals = {json.dumps(r["final"], sort_keys=True) for r in runs}
    if len(finals) != 1:
        raise SystemExit(f"final losses differ between runs: {sorted(finals)}")
    pairs = [runs[i:i + 2] for i in range(0, len(runs) - 1, 2)]
    by = {p: [r for r in runs if r["policy"] == p] for p in POLICIES}
    rows = [{"policy": p, "runs": len(rs), "wall_s_median": statistics.median(r["wall_s"] for r in rs),
             "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
             "system_s_median": statistics.median(r["system_s"] for r in rs),
             "minor_faults_median": statistics.median(r["minor_faults"] for r in rs),
             "clips_per_s_median": statistics.median(r["clips_per_s"] for r in rs)} for p, rs in by.items()]
    ratios = [{"pair": i + 1, **{f"{key}_on_over_off": common.ratio(_of(pr, "on", key), _of(pr, "off", key))
                                 for key in ("wall_s", "cpu_s", "clips_per_s")}}
              for i, pr in enumerate(pairs)]
    common.print_table(rows, title="per policy (medians)")
    common.print_table(ratios, title="per pair (on / off)")
    bench.write({"runs": runs, "per_policy": rows, "per_pair": ratios, "final_losses_equal": True}, args.out)


def _of(pair: list[dict[str, Any]], policy: str, key: str) -> float:
    return float(next(r[key] for r in pair if r["policy"] == policy))


if __name__ == "__main__":
    main()
