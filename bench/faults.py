"""Kill / resume scenarios: every interrupted stage, rerun, must equal an uninterrupted run.

Each scenario runs a real ``pipeline`` command in a child process on a tiny synthetic config, kills
it (SIGKILL, or SIGTERM for the graceful path) once its stage has made some progress, checks that
nothing was marked done, reruns the same command, and compares the stage's output with the same
stage built without interruption: teacher-cache maps shard by shard, the pretrained student and
the finetuned classifier tensor by tensor (max abs difference; 0 means bit-identical).

The child is slowed down where the kill must land (a short sleep after each teacher-cache shard
and in each training forward pass) so that kills hit the middle of the work on any machine; the
sleep changes no number. Results: a table on stdout and ``bench/results/faults.json``.

    .venv/bin/python bench/faults.py [--scenarios NAME ...] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TINY = [
    "synthetic.kinetics_per_class=3", "synthetic.ucf_per_class=2", "synthetic.hmdb_per_class=3",
    "synthetic.frames=24", "synthetic.width=48", "synthetic.height=48", "synthetic.workers=1",
    "clips.anchors_per_video=2", "clips.clip_len=8",
    "teacher.map_size=16", "teacher.shard_size=4", "teacher.workers=1",
    "model.width=0.125", "model.input_size=32", "model.parse_size=8",
    "pretrain.epochs=3", "pretrain.max_steps_per_epoch=3", "pretrain.batch_size=4", "pretrain.queue_size=16",
    "pretrain.workers=1", "pretrain.deterministic=true", "finetune.epochs=3", "finetune.batch_size=4",
    "finetune.workers=1", "evaluate.clips=2", "evaluate.workers=0",
    'run.stages=["synthetic", "manifest", "teacher-cache", "pretrain", "finetune", "evaluate"]',
]
# --build-upstream: a stage made stale by a code edit during the run is rebuilt instead of refusing.
COMMANDS = {"teacher-cache": ["teacher-cache", "--build-upstream"], "pretrain": ["pretrain", "--build-upstream"],
            "finetune": ["finetune", "--build-upstream"]}
OUTPUT = {"teacher-cache": "shard-*.h5", "pretrain": "student.pt", "finetune": "classifier.pt"}
PROGRESS = {"teacher-cache": "shard-00001.h5", "pretrain": "checkpoints/last.pt", "finetune": "checkpoints/last.pt"}
DOWNSTREAM = {"teacher-cache": ["teacher-cache", "pretrain", "finetune", "evaluate"],
              "pretrain": ["pretrain", "finetune", "evaluate"], "finetune": ["finetune", "evaluate"]}


@dataclass(frozen=True)
class Scenario:
    name: str
    stage: str
    signal: int = signal.SIGKILL
    kills: int = 1
    array: bool = False  # teacher-cache as a job array of 2 shard jobs + a finishing call


SCENARIOS = [
    Scenario("teacher-cache SIGKILL", "teacher-cache"),
    Scenario("teacher-cache SIGTERM", "teacher-cache", signal.SIGTERM),
    Scenario("teacher-cache job array (2 jobs)", "teacher-cache", kills=0, array=True),
    Scenario("pretrain SIGKILL", "pretrain"),
    Scenario("pretrain SIGTERM (checkpoint saved)", "pretrain", signal.SIGTERM),
    Scenario("pretrain 4 random SIGKILLs in a row", "pretrain", kills=4),
    Scenario("finetune SIGKILL", "finetune"),
    Scenario("finetune SIGTERM (checkpoint saved)", "finetune", signal.SIGTERM),
]


# ------------------------------------------------------------------------------------------------
# The child: the real CLI, slowed down where the kills must land
# ------------------------------------------------------------------------------------------------

def _slow_down(seconds: float) -> None:
    """Sleep after each finished teacher-cache shard and in each training forward pass."""
    import torch

    from student.pretrain_model import PretrainModel
    from teacher.cache_stage import _ShardBuilder

    finish, pre_forward = _ShardBuilder._finish, PretrainModel.forward

    def slow_finish(self: Any) -> None:
        finish(self)
        time.sleep(seconds)

    def slow_pretrain(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return pre_forward(self, *args, **kwargs)

    def slow_module(module: torch.nn.Module, args: Any) -> None:
        if module.training:
            time.sleep(seconds)

    _ShardBuilder._finish = slow_finish
    PretrainModel.forward = slow_pretrain
    from student.model import ClassifierModel

    torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: slow_module(m, a) if isinstance(m, ClassifierModel) else None)


def child_main(argv: list[str]) -> None:
    """``faults.py --child SECONDS -- pipeline arguments``."""
    seconds = float(argv[0])
    _slow_down(seconds)
    from pipeline.cli import main

    sys.argv = ["pipeline", *argv[2:]]
    main()


# ------------------------------------------------------------------------------------------------
# The parent: run, kill, rerun, compare
# ------------------------------------------------------------------------------------------------

def pipeline_args(work: Path, *extra: str) -> list[str]:
    args = ["--work-dir", str(work)]
    for item in TINY:
        args += ["--set", item]
    return args + list(extra)


def start(work: Path, command: list[str], slow: float) -> subprocess.Popen:
    """The command in its own session (so a scheduler-style SIGTERM can reach its whole group);
    stderr goes to ``work/../<name>.log`` (a pipe nobody reads would block a chatty child)."""
    argv = [sys.executable, __file__, "--child", str(slow), "--", *pipeline_args(work, *command)]
    log = open(work.with_suffix(".log"), "ab")  # noqa: SIM115 - closed when the child is reaped
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, cwd=common.REPO, start_new_session=True)


def _live_members(pgid: int) -> int:
    """Processes still alive (not zombies) in the killed command's process group: orphaned workers."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            n += 1
    return n


def _reap(proc: subprocess.Popen) -> None:
    """Never leave a child (or its data-loading workers) behind, whatever went wrong here."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(work: Path, command: list[str], slow: float = 0.0) -> None:
    proc = start(work, command, slow)
    try:
        proc.wait(timeout=600)
    finally:
        _reap(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline {' '.join(command)} failed ({proc.returncode}): {_last_line(work)}")


def _last_line(work: Path) -> str:
    lines = work.with_suffix(".log").read_text(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def partial_dir(work: Path, stage: str) -> Path | None:
    found = sorted((work / stage).glob("*/*.partial"))
    return found[0] if found else None


def finished_dir(work: Path, stage: str) -> Path | None:
    found = sorted(p for p in (work / stage).glob("*/*") if (p / "stage.json").is_file())
    return found[0] if found else None


def kill_when_progressing(work: Path, sc: Scenario, rng: random.Random, slow: float) -> str:
    """Start the stage, wait for its first progress file (plus a random delay), send the signal."""
    proc = start(work, COMMANDS[sc.stage], slow)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            part = partial_dir(work, sc.stage)
            if part is not None and (part / PROGRESS[sc.stage]).exists():
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2 * slow))
        if proc.poll() is not None:
            return "finished before the kill"
        # SIGKILL: the CLI alone (its workers must die with it); SIGTERM: the group, as a scheduler does
        if sc.signal == signal.SIGKILL:
            os.kill(proc.pid, sc.signal)
        else:
            os.killpg(proc.pid, sc.signal)
        proc.wait(timeout=120)
        time.sleep(1.0)
        orphans = _live_members(proc.pid)
        why = f" ({_last_line(work)[:80]})" if proc.returncode not in (-signal.SIGKILL, -signal.SIGTERM, 130) else ""
        return f"{signal.Signals(sc.signal).name}: exit {proc.returncode}{why}, {orphans} orphans"
    finally:
        _reap(proc)


def max_abs_diff(a: Path, b: Path, stage: str) -> float:
    if stage == "teacher-cache":
        return _maps_diff(a, b)
    import torch

    x = torch.load(a / OUTPUT[stage], map_location="cpu", weights_only=True)
    y = torch.load(b / OUTPUT[stage], map_location="cpu", weights_only=True)
    return _tensor_diff(x, y)


def _maps_diff(a: Path, b: Path) -> float:
    import h5py
    import numpy as np

    names = sorted(p.name for p in a.glob(OUTPUT["teacher-cache"]))
    if names != sorted(p.name for p in b.glob(OUTPUT["teacher-cache"])):
        return float("inf")
    worst = 0.0
    for n in names:
        with h5py.File(a / n, "r") as f, h5py.File(b / n, "r") as g:
            worst = max(worst, float(np.abs(f["maps"][...].astype(np.float32) - g["maps"][...].astype(np.float32))
                                     .max(initial=0.0)))
    return worst


def _tensor_diff(x: Any, y: Any) -> float:
    import torch

    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if x.shape != y.shape:
            return float("inf")
        return float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return float("inf")
        return max((_tensor_diff(x[k], y[k]) for k in x), default=0.0)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return max((_tensor_diff(p, q) for p, q in zip(x, y)), default=0.0) if len(x) == len(y) else float("inf")
    return 0.0 if x == y or not isinstance(x, (int, float)) else abs(float(x) - float(y))


def prepare(base: Path, work: Path, stage: str) -> None:
    """A copy of the finished reference without ``stage`` and what follows it."""
    if work.exists():
        shutil.rmtree(work)
    work.with_suffix(".log").unlink(missing_ok=True)
    shutil.copytree(base, work)
    for kind in DOWNSTREAM[stage]:
        shutil.rmtree(work / kind, ignore_errors=True)


def run_scenario(base: Path, scratch: Path, sc: Scenario, rng: random.Random, slow: float) -> dict[str, Any]:
    work = scratch / sc.name.split()[0]
    prepare(base, work, sc.stage)
    t0 = time.perf_counter()
    kills: list[str] = []
    if sc.array:
        for i in range(2):
            run(work, COMMANDS[sc.stage] + ["--shard-index", str(i), "--num-shards", "2"])
        kills.append("2 shard jobs")
    for _ in range(sc.kills):
        kills.append(kill_when_progressing(work, sc, rng, slow))
    done_after_kill = finished_dir(work, sc.stage) is not None if sc.kills else None  # a job array finishes itself
    run(work, COMMANDS[sc.stage])
    out = finished_dir(work, sc.stage)
    ref = finished_dir(base, sc.stage)
    summary = json.loads((out / "stage.json").read_text())["summary"] if out else {}
    return {"scenario": sc.name, "interruptions": "; ".join(kills),
            "marked_done_while_interrupted": done_after_kill,
            "resumed": bool(summary.get("resumed_from") or summary.get("resumed") or sc.stage == "teacher-cache"),
            "max_abs_diff": max_abs_diff(out, ref, sc.stage) if out and ref else float("nan"),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="*", default=None, help="Names (prefix match) to run; default all.")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder [default: a temp folder].")
    ap.add_argument("--slow", type=float, default=0.4, help="Seconds of sleep per shard / training step.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bench = common.Bench("faults", "kill/resume scenarios: rerun after a kill vs. an uninterrupted run",
                         settings={"tiny": TINY, "slow_s": args.slow, "seed": args.seed})
    scratch = args.work or common.work_dir("faults")
    base = scratch / "reference"
    shutil.rmtree(base, ignore_errors=True)
    base.with_suffix(".log").unlink(missing_ok=True)
    run(base, ["run"])  # every stage, uninterrupted
    rng = random.Random(args.seed)
    chosen = [s for s in SCENARIOS if not args.scenarios or any(s.name.startswith(p) for p in args.scenarios)]
    rows = [run_scenario(base, scratch, sc, rng, args.slow) for sc in chosen]
    common.print_table(rows, title="kill / resume vs. uninterrupted (max_abs_diff 0 = bit-identical)")
    bench.write({"scenarios": rows}, notes=["a torchrun rank killed is not replayed here (needs 2 processes)"])


if __name__ == "__main__":
    main()
