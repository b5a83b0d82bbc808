"""Device choice under every way Slurm binds GPUs to tasks (issue #21), without a GPU: the device count
and CUDA's presence are simulated, the process group is recorded instead of created, and each case
runs ``init_distributed`` as a rank of that launch would (what it names and which GPU it makes current)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from pipeline.core import distributed
from pipeline.core.distributed import env_local_rank, gpu_index, init_distributed
from pipeline.core.errors import ConfigError

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_LOCALID", "SLURM_PROCID", "CUDA_VISIBLE_DEVICES")

# (binding, GPUs this task sees, environment of the rank, the device it must take)
BINDINGS = [
    # torchrun on a node (srun --ntasks-per-node=1 torchrun --nproc_per_node=4): every rank sees 4 GPUs
    ("torchrun, all GPUs visible, rank 0", 4, {"RANK": "4", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}, "cuda:0"),
    ("torchrun, all GPUs visible, rank 3", 4, {"RANK": "7", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, "cuda:3"),
    # srun --ntasks-per-node=4 --gpus-per-task=1: Slurm sets CUDA_VISIBLE_DEVICES per task, one GPU each
    ("--gpus-per-task=1, task 2", 1, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "SLURM_LOCALID": "2",
                                      "CUDA_VISIBLE_DEVICES": "2"}, "cuda:0"),
    # --gpu-bind=map_gpu / single:1 without LOCAL_RANK exported: one GPU, local id from Slurm
    ("--gpu-bind=map_gpu, task 3", 1, {"RANK": "3", "WORLD_SIZE": "4", "SLURM_LOCALID": "3",
                                       "CUDA_VISIBLE_DEVICES": "3"}, "cuda:0"),
    # srun --ntasks-per-node=4 --gpus-per-node=4, no binding: every task sees 4 GPUs, SLURM_LOCALID picks one
    ("--gpus-per-node=4 unbound, task 1", 4, {"RANK": "1", "WORLD_SIZE": "4", "SLURM_LOCALID": "1"}, "cuda:1"),
    # one process on a one-GPU allocation
    ("single process, one GPU", 1, {"SLURM_LOCALID": "0"}, "cuda:0"),
]


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch):
    """Simulated CUDA with ``n`` GPUs; the process group calls recorded, not made."""
    calls: dict[str, Any] = {}

    def setup(n: int, env: dict[str, str]) -> dict[str, Any]:
        for name in LAUNCH_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.__setitem__("current", i))
        monkeypatch.setattr(distributed.tdist, "is_initialized", lambda: False)
        monkeypatch.setattr(distributed.tdist, "init_process_group",
                            lambda backend, timeout: calls.__setitem__("backend", backend))
        monkeypatch.setattr(distributed.tdist, "new_group", lambda **kw: None)
        return calls

    return setup


@pytest.mark.parametrize("binding,visible,env,want", BINDINGS, ids=[b[0] for b in BINDINGS])
def test_each_slurm_binding_gets_its_own_gpu(fake_cluster, binding: str, visible: int, env: dict[str, str],
                                             want: str) -> None:
    calls = fake_cluster(visible, env)
    info = init_distributed("auto")
    assert info.device == want, binding
    assert distributed.resolve_device("cuda", env_local_rank()) == want
    if info.distributed:
        assert calls["current"] == int(want.split(":")[1]) and calls["backend"] == "cpu:gloo,cuda:nccl"


def test_more_ranks_than_visible_gpus_is_a_clear_error(fake_cluster) -> None:
    fake_cluster(2, {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"})
    with pytest.raises(ConfigError, match=r"local rank 3 but only 2 GPUs are visible .*--gpus-per-task=1"):
        init_distributed("auto")


def test_cpu_only_and_bad_local_id(fake_cluster) -> None:
    fake_cluster(0, {"SLURM_LOCALID": "1"})
    assert init_distributed("auto").device == "cpu"
    fake_cluster(0, {"SLURM_LOCALID": "one"})
    with pytest.raises(ConfigError, match="SLURM_LOCALID='one' is not a whole number"):
        env_local_rank()
    assert gpu_index(5, 1) == 0 and gpu_index(2, 4) == 2 and gpu_index(3, 0) == 3


def test_ddp_wrapping_raises_no_future_warning(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """torch's ``broadcast_buffers`` FutureWarning (printed once per rank) is gone: the current keyword is used."""
    import warnings

    import torch.distributed as tdist

    from pipeline.core.distributed import DistInfo
    from pipeline.core.runtime import wrap_ddp

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            net = wrap_ddp(torch.nn.Linear(2, 2), DistInfo(world_size=2), "cpu", broadcast_buffers=False)
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
    finally:
        tdist.destroy_process_group()
