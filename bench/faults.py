"""Kill / resume scenarios: every interrupted stage, rerun, must equal an uninterrupted run.

Each scenario runs a real ``pipeline`` command in a child process on a tiny synthetic config, kills
it (SIGKILL, or SIGTERM for the graceful path) once its stage has made some progress, checks that
nothing was marked done, reruns the same command, and compares the stage's output with the same
stage built without interruption: teacher-cache maps shard by shard, the pretrained student and
the finetuned classifier tensor by tensor (max abs difference; 0 means bit-identical).

The child is slowed down where the kill must land (a short sleep after each teacher-cache shard
and in each training forward pass) so that kills hit the middle of the work on any machine; the
sleep changes no number. Results: a table on stdout and ``bench/results/faults.json``.

A second family, the fault cases (issue 24), runs each bad situation as a user meets it (a corrupt
source, a full disk, a zero-byte copy, bit flips, a replaced video, bad arguments and paths, …)
through the real CLI in a child process with a time limit, and counts three failures over all
cases: a stage marked done with bad outputs (checked independently: every video of a finished
folder decodes, a transcode copy with its manifest's frame count), a hang (the time limit hit) and
a traceback.

    .venv/bin/python bench/faults.py [--scenarios NAME ...] [--cases NAME ...] [--work DIR]
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


# ------------------------------------------------------------------------------------------------
# Fault cases: bad inputs and environments, through the CLI, with a time limit
# ------------------------------------------------------------------------------------------------

FAULT_STAGES = ['run.stages=["synthetic", "manifest", "teacher-cache", "transcode"]', "transcode.enabled=true",
                "transcode.short_side=32", "transcode.workers=1"]
CASE_TIMEOUT = 120


@dataclass
class Outcome:
    rc: int | None  # None: the time limit was hit (a hang)
    out: str


def cli_run(work: Path, *args: str, sets: tuple[str, ...] = (), limit_fsize: int | None = None) -> Outcome:
    """One CLI command in a child process (own session; killed with its group at the time limit)."""
    argv = [sys.executable, "-m", "pipeline.cli", *pipeline_args(work, *[a for s in FAULT_STAGES + list(sets)
                                                                         for a in ("--set", s)], *args)]

    def limit() -> None:
        if limit_fsize is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, resource.RLIM_INFINITY))

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=common.REPO,
                            start_new_session=True, preexec_fn=limit)
    try:
        out, _ = proc.communicate(timeout=CASE_TIMEOUT)
        return Outcome(proc.returncode, out)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Outcome(None, out)


def _decodes(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def bad_done_stages(work: Path) -> list[str]:
    """Finished stage folders holding a video that does not decode (or a transcode copy whose frame
    count differs from its manifest): checked here with OpenCV alone, not with the pipeline's checks."""
    bad = []
    for sj in work.glob("*/*/*/stage.json"):
        folder = sj.parent
        if folder.name.endswith(".partial"):
            continue
        frames = {}
        if (folder / "manifest.jsonl").is_file() and (folder / "videos").is_dir():
            for line in (folder / "manifest.jsonl").read_text().splitlines():
                rec = json.loads(line)
                frames[(folder / "videos" / rec["path"]).as_posix()] = rec["frames"]
            if any(not Path(p).is_file() for p in frames):
                bad.append(f"{folder}: a listed copy is missing")
        for video in list(folder.rglob("*.avi")) + list(folder.rglob("*.mp4")):
            n = _decodes(video) if video.stat().st_size else 0
            want = frames.get(video.as_posix())
            if n == 0 or (want is not None and n != want):
                bad.append(f"{video}: {n} frames decode" + (f", manifest says {want}" if want else ""))
    return bad


def _flip(path: Path) -> None:
    """One flipped bit in the middle of ``path``; size and mtime kept (as silent disk corruption)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _error_lines(o: Outcome) -> list[str]:
    return [ln for ln in o.out.splitlines() if ln.startswith("Error:")]


def _expect_error(o: Outcome, *needles: str) -> str:
    lines = _error_lines(o)
    ok = o.rc == 1 and len(lines) == 1 and all(n in lines[0] for n in needles)
    return "" if ok else f"expected one Error line with {needles}, got rc {o.rc}: {(lines or [o.out[-200:]])[0][:160]}"


def _only_dir(work: Path, kind: str) -> Path:
    pattern = "*" if "/" in kind else "*/*"
    (path,) = [p for p in (work / kind).glob(pattern) if (p / "stage.json").is_file()]
    return path


def _source(work: Path) -> Path:
    """A video of the kinetics400 manifest (what transcode reads)."""
    from data_manifests.manifest import load_manifest

    m = load_manifest(_only_dir(work, "manifest/kinetics400"))
    return m.abspath(m.entries[1])


def case_transcode_unreadable_source(work: Path) -> list[tuple[Outcome, str]]:
    shutil.rmtree(work / "transcode")
    src = _source(work)
    good = src.read_bytes()
    src.write_bytes(b"\0" * len(good))
    first = cli_run(work, "transcode", "--dataset", "kinetics400")
    src.write_bytes(good)
    again = cli_run(work, "transcode", "--dataset", "kinetics400")
    return [(first, _expect_error(first, "could not be copied", src.name)),
            (again, "" if again.rc == 0 and "0 earlier failures" not in again.out else "failure not retried")]


def case_transcode_disk_full(work: Path) -> list[tuple[Outcome, str]]:
    shutil.rmtree(work / "transcode")
    full = cli_run(work, "transcode", "--dataset", "kinetics400", limit_fsize=16 * 1024)
    again = cli_run(work, "transcode", "--dataset", "kinetics400")
    return [(full, _expect_error(full, "no space left", ".avi")), (again, "" if again.rc == 0 else "no resume")]


def case_zero_byte_copy_in_partial(work: Path) -> list[tuple[Outcome, str]]:
    done = _only_dir(work, "transcode/kinetics400")
    copy = sorted((done / "videos").rglob("*.avi"))[0]
    copy.write_bytes(b"")
    (done / "stage.json").unlink()
    done.rename(done.with_name(done.name + ".partial"))
    again = cli_run(work, "transcode", "--dataset", "kinetics400")
    verify = cli_run(work, "status", "--verify")
    return [(again, "" if again.rc == 0 else "rerun failed"), (verify, "" if verify.rc == 0 else "not verified")]


def _flip_and_verify(work: Path, video: Path) -> list[tuple[Outcome, str]]:
    _flip(video)
    verify = cli_run(work, "status", "--verify")
    rebuilt = cli_run(work, "run")
    clean = cli_run(work, "status", "--verify")
    return [(verify, "" if verify.rc == 1 and video.name in verify.out else "--verify missed the bit flip"),
            (rebuilt, "" if rebuilt.rc == 0 else "rebuild failed"), (clean, "" if clean.rc == 0 else "still damaged")]


def case_bit_flip_in_a_copy(work: Path) -> list[tuple[Outcome, str]]:
    return _flip_and_verify(work, sorted((_only_dir(work, "transcode/kinetics400") / "videos").rglob("*.avi"))[0])


def case_bit_flip_in_a_generated_video(work: Path) -> list[tuple[Outcome, str]]:
    return _flip_and_verify(work, sorted(_only_dir(work, "synthetic").rglob("*.avi"))[0])


def case_source_replaced_same_size_and_mtime(work: Path) -> list[tuple[Outcome, str]]:
    src = _source(work)
    st = src.stat()
    other = sorted(p for p in src.parent.parent.rglob(f"*{src.suffix}") if p != src)[0].read_bytes()
    src.write_bytes((other + b"\0" * st.st_size)[:st.st_size])
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    verify = cli_run(work, "status", "--verify")
    # the synthetic stage's own hashes or the manifest's sources.jsonl: either must name the video
    return [(verify, "" if verify.rc == 1 and src.name in verify.out else "--verify missed it")]


def case_manifest_label_edited(work: Path) -> list[tuple[Outcome, str]]:
    listing = _only_dir(work, "manifest/hmdb51") / "manifest.jsonl"
    text = listing.read_text()
    listing.write_text(text.replace('"label": 0', '"label": 1', 1))
    status = cli_run(work, "status")
    return [(status, "" if "content changed" in status.out else "the edit went unnoticed")]


def case_teacher_cache_disk_full_with_workers(work: Path) -> list[tuple[Outcome, str]]:
    o = cli_run(work, "teacher-cache", sets=("teacher.map_size=64", "teacher.workers=1"), limit_fsize=64 * 1024)
    return [(o, _expect_error(o, "no space left", "shard-00000"))]


def case_relocated_work_dir(work: Path) -> list[tuple[Outcome, str]]:
    moved = work.with_name(work.name + "-moved")
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(work, moved)
    hidden = work.with_name(work.name + "-hidden")
    work.rename(hidden)
    try:
        o = cli_run(moved, "status", "--verify")
        meta = json.loads((_only_dir(moved, "transcode/kinetics400") / "meta.json").read_text())
    finally:
        hidden.rename(work)
        shutil.rmtree(moved, ignore_errors=True)
    return [(o, "" if o.rc == 0 and meta["root"] == "videos" else f"copy not self-contained (root {meta['root']})")]


def case_folder_dataset_with_unreadable_entries(work: Path) -> list[tuple[Outcome, str]]:
    root = work.with_name(work.name + "-folder")
    shutil.rmtree(root, ignore_errors=True)
    for cls in ("bend", "wave"):
        (root / cls).mkdir(parents=True)
        for v in sorted((_only_dir(work, "synthetic") / "hmdb51" / "videos" / cls).glob("*.avi"))[:2]:
            shutil.copy(v, root / cls / v.name)
    (root / "bend" / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    os.mkfifo(root / "wave" / "pipe.mp4")
    o = cli_run(work, "manifest", "--dataset", "folder", "--root", str(root), "--name", "f")
    shutil.rmtree(root, ignore_errors=True)
    return [(o, "" if o.rc == 0 and "rejected 2" in o.out else "not indexed around the bad entries")]


def case_bad_arguments_and_values(work: Path) -> list[tuple[Outcome, str]]:
    checks = []
    for args, sets, needles in [
        (("sweep", "--protocol", "finetune", "--dataset", "nope"), (), ("'nope'",)),
        (("sweep", "--protocol", "finetune", "--dataset", "hmdb51", "--seeds", "-1"), (), ("--seeds -1",)),
        (("sweep", "--protocol", "finetune", "--dataset", "hmdb51", "--splits", "1", "--splits", "1"), (),
         ("--splits 1",)),
        (("status",), ("pretrain.queue_size=4000000000",), ("pretrain.queue_size",)),
        (("status",), ("clips.speeds=[1, 1]",), ("clips.speeds",)),
        (("status",), ("pretrain.lr=1e-400",), ("pretrain.lr",)),
    ]:
        o = cli_run(work, *args, sets=sets)
        checks.append((o, _expect_error(o, *needles)))
    out = work.with_name("exported.pt")
    out.write_bytes(b"keep")
    o = cli_run(work, "export", "--checkpoint", str(out), "-o", str(out))
    checks.append((o, _expect_error(o, "already exists") or ("" if out.read_bytes() == b"keep" else "overwritten")))
    out.unlink()
    return checks


def case_unusable_work_dirs(work: Path) -> list[tuple[Outcome, str]]:
    base = work.with_name(work.name + "-paths")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    (base / "a").symlink_to(base / "b")
    (base / "b").symlink_to(base / "a")
    checks = []
    for target, needle in [(base / "a" / "w", "symlink loop"), (base / ("x" * 300), "300 bytes"),
                           (base.joinpath(*["y" * 200] * 21), "4096")]:
        for command in ("run", "status"):
            o = cli_run(target, command)
            checks.append((o, _expect_error(o, needle)))
    shutil.rmtree(base, ignore_errors=True)
    return checks


CASES = {name[len("case_"):].replace("_", " "): fn for name, fn in sorted(globals().items())
         if name.startswith("case_") and callable(fn)}


def run_case(base: Path, scratch: Path, name: str) -> dict[str, Any]:
    work = scratch / ("case-" + name.replace(" ", "-"))
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(base, work, symlinks=True)
    t0 = time.perf_counter()
    try:
        checks = CASES[name](work)
        crashed = []
    except Exception as exc:  # noqa: BLE001 - a broken case is reported as such, the others still run
        checks, crashed = [], [f"case error: {type(exc).__name__}: {exc}"]
    bad = bad_done_stages(work)
    problems = crashed + [why for _, why in checks if why] + bad
    row = {"case": name, "commands": len(checks), "hangs": sum(o.rc is None for o, _ in checks),
           "tracebacks": sum("Traceback" in o.out for o, _ in checks), "bad_done": len(bad),
           "ok": not problems, "problem": (problems[0][:120] if problems else ""),
           "seconds": round(time.perf_counter() - t0, 1)}
    shutil.rmtree(work, ignore_errors=True)
    return row


def run_fault_cases(scratch: Path, chosen: list[str]) -> list[dict[str, Any]]:
    base = scratch / "fault-base"
    shutil.rmtree(base, ignore_errors=True)
    first = cli_run(base, "run")
    if first.rc != 0:
        raise RuntimeError(f"fault-case base run failed ({first.rc}): {first.out[-300:]}")
    return [run_case(base, scratch, name) for name in chosen]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="*", default=None, help="Names (prefix match) to run; default all.")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder [default: a temp folder].")
    ap.add_argument("--slow", type=float, default=0.4, help="Seconds of sleep per shard / training step.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="*", default=None, help="Fault cases (prefix match) to run; default all.")
    ap.add_argument("--no-scenarios", action="store_true", help="Run the fault cases only.")
    args = ap.parse_args()
    bench = common.Bench("faults", "kill/resume scenarios: rerun after a kill vs. an uninterrupted run",
                         settings={"tiny": TINY, "slow_s": args.slow, "seed": args.seed})
    scratch = args.work or common.work_dir("faults")
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if not args.no_scenarios:
        base = scratch / "reference"
        shutil.rmtree(base, ignore_errors=True)
        base.with_suffix(".log").unlink(missing_ok=True)
        run(base, ["run"])  # every stage, uninterrupted
        rng = random.Random(args.seed)
        chosen = [s for s in SCENARIOS if not args.scenarios or any(s.name.startswith(p) for p in args.scenarios)]
        rows = [run_scenario(base, scratch, sc, rng, args.slow) for sc in chosen]
        common.print_table(rows, title="kill / resume vs. uninterrupted (max_abs_diff 0 = bit-identical)")
    names = [n for n in CASES if not args.cases or any(n.startswith(p) for p in args.cases)]
    cases = run_fault_cases(scratch, names) if names else []
    totals = {"cases": len(cases), "cases_ok": sum(c["ok"] for c in cases),
              "stages_done_with_bad_outputs": sum(c["bad_done"] for c in cases),
              "hangs": sum(c["hangs"] for c in cases), "tracebacks": sum(c["tracebacks"] for c in cases)}
    if cases:
        common.print_table(cases, title="fault cases (bad_done: finished stages with undecodable or missing videos)")
        print("fault cases: " + ", ".join(f"{k} {v}" for k, v in totals.items()), flush=True)
    bench.write({"scenarios": rows, "fault_cases": cases, "fault_totals": totals},
                notes=["a torchrun rank killed is not replayed here (needs 2 processes)"])


if __name__ == "__main__":
    main()
