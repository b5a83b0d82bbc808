"""Resume under DDP is exact (issue #21): a two-rank gloo pretraining run stopped by SIGTERM mid-epoch and
run again ends with the same bits as an uninterrupted two-rank run (checkpoint: model with BN statistics,
key encoder and queue, optimizer, schedule, every rank's RNG; and student.pt).

Where the difference used to enter: each checkpoint averaged the BN running statistics of the LIVE
model over ranks, so a run that saved mid-epoch trained on from averaged statistics while an
uninterrupted run kept each rank's own; float averaging does not commute with the running-average
update (differences of ~1e-7). Checkpoints now hold the average AND each rank's own statistics.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest
import torch

from student.checkpointing import TrainingInterrupted, load_checkpoint
from student.pretrain import StepInfo, pretrain
from test_pretrain import CFG, CLIPS, MODEL, _free_port, tensors_equal, toy  # noqa: F401  (toy: a fixture)

EPOCHS, STOP_AT = 5, 5  # global step: epoch 2, step 1 of 2 (two steps per epoch)


def _rank(rank: int, port: str, toy: dict, out: Path, stop_at: int | None, results: Path) -> None:
    """One rank in a forked child; rank 0 gets SIGTERM after global step ``stop_at`` (both ranks then stop)."""
    from pipeline.core.distributed import cleanup, init_distributed

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
    torch.set_num_threads(1)

    def on_step(info: StepInfo) -> None:
        if rank == 0 and info.global_step == stop_at:
            signal.raise_signal(signal.SIGTERM)

    dist = init_distributed("cpu")
    cfg = dataclasses.replace(CFG, epochs=EPOCHS, batch_size=2)
    try:
        summary = pretrain(toy["manifest"], toy["cache"], out, MODEL, cfg, CLIPS, dist=dist, on_step=on_step)
    except TrainingInterrupted as exc:
        summary = {"interrupted_at": exc.step}
    cleanup()
    torch.save(summary, results / f"{out.name}-rank{rank}.pt")


def _two_ranks(toy: dict, out: Path, stop_at: int | None, results: Path) -> dict:
    ctx = mp.get_context("fork")  # forked children reuse this process's imports
    port = str(_free_port())
    procs = [ctx.Process(target=_rank, args=(r, port, toy, out, stop_at, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("DDP ranks timed out")
    assert [p.exitcode for p in procs] == [0, 0], "a rank failed (its traceback is in the captured stderr)"
    return torch.load(results / f"{out.name}-rank0.pt", weights_only=True)


@pytest.mark.slow
def test_two_rank_sigterm_and_resume_is_bit_exact(toy, tmp_path: Path) -> None:
    full = _two_ranks(toy, tmp_path / "full", None, tmp_path)
    assert full["steps"] == 2 * EPOCHS and full["world_size"] == 2 and full["resumed_from"] is None

    out = tmp_path / "resumed"
    assert _two_ranks(toy, out, STOP_AT, tmp_path) == {"interrupted_at": STOP_AT}
    mid = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (2, 1) and len(mid["bn_stats_per_rank"]) == 2
    resumed = _two_ranks(toy, out, None, tmp_path)
    assert resumed["resumed_from"]["global_step"] == STOP_AT and resumed["steps_this_run"] == 2 * EPOCHS - STOP_AT

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "scheduler", "rng", "bn_stats_per_rank"):
        assert tensors_equal(a[part], b[part]) == [], part
    sa = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    sb = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    assert tensors_equal(sa, sb) == []
    # the ranks did train on different statistics (so keeping each rank's own is what the test checks)
    own0, own1 = a["bn_stats_per_rank"]
    assert any(not torch.equal(x, y) for x, y in zip(own0, own1))
