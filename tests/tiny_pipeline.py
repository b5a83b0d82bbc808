"""A tiny synthetic work folder shared by the test modules that need a pretrained student
(summaries, linear probe, sweep, TensorBoard): built once per test session, ~20 s on 2 cores."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from pipeline.cli import main

TINY = [
    "synthetic.kinetics_per_class=3", "synthetic.ucf_per_class=2", "synthetic.hmdb_per_class=3",
    "synthetic.frames=24", "synthetic.width=48", "synthetic.height=48", "synthetic.workers=1",
    "clips.anchors_per_video=2", "clips.clip_len=8",
    "teacher.map_size=16", "teacher.shard_size=16", "teacher.workers=0",
    "model.width=0.125", "model.input_size=32", "model.parse_size=8",
    "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2", "pretrain.batch_size=4", "pretrain.queue_size=16",
    "pretrain.workers=0", "finetune.epochs=1", "finetune.batch_size=4", "finetune.workers=0",
    "evaluate.clips=2", "evaluate.workers=0", "retrieval.clips=2", "retrieval.workers=0",
    "linear_probe.clips=2", "linear_probe.workers=0",
]

_BUILT: dict[str, Path] = {}


def invoke(work: Path, *args: str, sets: tuple[str, ...] = ()) -> Result:
    """``pipeline --work-dir WORK --set (TINY + sets) ... args`` in-process; asserts exit code 0."""
    cli = ["--work-dir", str(work)]
    for item in TINY + list(sets):
        cli += ["--set", item]
    result = CliRunner().invoke(main, cli + list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def stage_folder(output: str, kind: str) -> Path:
    """The folder a stage command's summary names (``<kind> <name>: <folder> (built in ...)``)."""
    for line in output.splitlines():
        if line.startswith(f"{kind} ") and ": /" in line:
            return Path(line.split(": ", 1)[1].split(" (built", 1)[0])
    raise AssertionError(f"no '{kind} <name>: <folder>' line in:\n{output}")


def pretrained_work(factory) -> Path:
    """The session's tiny work folder with synthetic data, manifests, teacher cache and a pretrained student."""
    if "work" not in _BUILT:
        work = factory.mktemp("tiny-work")
        invoke(work, "pretrain", "--build-upstream")
        _BUILT["work"] = work
    return _BUILT["work"]
