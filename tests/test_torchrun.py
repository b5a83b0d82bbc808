"""The CLI under torchrun on CPU (gloo): two ranks build the tiny pipeline up to pretraining,
agree on every fingerprint, and rank 0 alone writes each stage's stage.json."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_end_to_end import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_build_teacher_cache_and_pretrain(tmp_path: Path):
    exe = Path(sys.executable).parent / "pipeline"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "--no-python", str(exe), "--work-dir", str(tmp_path)]
    for item in TINY:
        args += ["--set", item]
    args += ["--set", "pretrain.batch_size=2", "pretrain", "--build-upstream", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (pre,) = [p for p in (tmp_path / "pretrain").glob("*/*") if (p / "stage.json").is_file()]
    record = json.loads((pre / "stage.json").read_text())
    assert record["world_size"] == 2
    assert record["summary"]["world_size"] == 2 and record["summary"]["global_batch"] == 4
    ckpt = torch.load(pre / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["world_size"] == 2
    # 2 steps × 2 ranks × 2 clips: the queue holds keys gathered from both ranks
    assert int(ckpt["model"]["queue.ptr"]) == 8
    (cache,) = [p for p in (tmp_path / "teacher-cache").glob("*/*") if (p / "stage.json").is_file()]
    assert json.loads((cache / "stage.json").read_text())["summary"]["complete"] is True
    assert not list(tmp_path.glob("*/*/*.partial"))
