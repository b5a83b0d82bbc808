"""torch.distributed helpers: one code path for a single process, torchrun on CPU (gloo) or GPU (nccl)."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist  # `dist` is a DistInfo everywhere else

from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: rank, world size, local rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True once this process has joined a process group (the one test for "are we distributed?")."""
    return tdist.is_available() and tdist.is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


# Collectives time out after this long (NCCL/gloo default 30 min); PIPELINE_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 1800
# How long ranks wait for work that one rank (or a slower rank) does alone: a rank-0-only stage such
# as probing Kinetics-400 takes hours. torchrun stops the other ranks if that rank dies, so a long
# timeout does not turn a crash into a hang. PIPELINE_RANK0_WAIT_S overrides it.
RANK0_WAIT_S = 7 * 24 * 3600

_wait_group: Any = None


def job_share(total: int, dist: DistInfo, shard_index: int | None = None,
              num_shards: int | None = None) -> list[int]:
    """The indices (of shards, videos, ...) this process handles: the job's share under
    ``--shard-index i --num-shards n`` (``i, i+n, ...``), then every ``world_size``-th of those from ``rank``."""
    if (shard_index is None) != (num_shards is None):
        raise ConfigError("--shard-index and --num-shards go together (e.g. --shard-index 0 --num-shards 4)")
    mine = list(range(total))
    if num_shards is not None and shard_index is not None:
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ConfigError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
        mine = mine[shard_index::num_shards]
    return mine[dist.rank::dist.world_size]


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} "
                          f"is not a whole number of seconds") from None


def env_local_rank() -> int:
    """This process's index on its node: ``LOCAL_RANK`` (torchrun), else ``SLURM_LOCALID`` (tasks that
    ``srun`` starts directly, one per GPU), else 0."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not a whole number") from None
    return 0


def visible_gpus() -> int:
    """How many GPUs this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_index(local_rank: int, visible: int) -> int:
    """Which visible GPU this rank takes, under every way Slurm (or a user) binds GPUs to tasks.

    One GPU visible (``--gpus-per-task=1``, ``--gpu-bind=single:1`` / ``map_gpu``, or
    CUDA_VISIBLE_DEVICES set per task): that GPU, ``cuda:0``, whatever the local rank. Several
    visible (torchrun with the node's GPUs, or ``srun`` tasks that all see them): GPU ``local_rank``.
    None visible (``visible`` 0: CUDA absent here): GPU ``local_rank`` by name; using it fails in torch.
    """
    if visible == 1:
        return 0
    if 1 < visible <= local_rank:
        raise ConfigError(f"local rank {local_rank} but only {visible} GPUs are visible to it (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): start at most {visible} "
                          f"processes per node, or give each task one GPU (Slurm --gpus-per-task=1)")
    return local_rank


def resolve_device(requested: str = "auto", local_rank: int = 0) -> str:
    """'auto' picks this rank's GPU when there is one, else the CPU; 'cuda' is this rank's GPU
    (:func:`gpu_index`: GPU LOCAL_RANK, or the one GPU a task was given).

    Under torchrun every rank reads the same config, so ``cuda:N`` would put every rank on GPU N:
    refused (use 'cuda' or 'auto').
    """
    if requested == "auto":
        return f"cuda:{gpu_index(local_rank, visible_gpus())}" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{gpu_index(local_rank, visible_gpus())}"
    if requested.startswith("cuda:") and launched_by_torchrun():
        raise ConfigError(f"device {requested!r} under torchrun would put every rank on one GPU: use --device cuda "
                          f"(or auto; each rank then takes GPU LOCAL_RANK), and CUDA_VISIBLE_DEVICES to choose GPUs")
    return requested


def process_group_backend() -> str:
    """One group for every device: gloo for CPU tensors, NCCL for CUDA ones (when there is a GPU).

    Why: the group is created before any stage's device is known, and one run mixes devices
    (a CPU-side stop flag, CPU object collectives, CUDA gradients). ``PIPELINE_DIST_BACKEND``
    overrides it (clusters without NCCL; the tests use ``cpu:gloo,cuda:gloo``).
    """
    override = os.environ.get("PIPELINE_DIST_BACKEND", "").strip()
    if override:
        return override
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(device: str = "auto", timeout_s: int | None = None) -> DistInfo:
    """Join the process group when torchrun started us; otherwise describe a single process.

    Idempotent: a second call returns the same description without re-initialising; ``device``
    only decides the returned ``DistInfo.device`` (each stage resolves its own).
    """
    if not launched_by_torchrun():
        return DistInfo(device=resolve_device(device))
    global _wait_group
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = env_local_rank()
    dev = resolve_device(device, local_rank)
    if not tdist.is_initialized():
        timeout = timeout_s if timeout_s is not None else _int_env("PIPELINE_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        if torch.cuda.is_available():  # NCCL's communicators are made on the current device: this rank's GPU
            torch.cuda.set_device(gpu_index(local_rank, visible_gpus()))
        tdist.init_process_group(backend=process_group_backend(), timeout=datetime.timedelta(seconds=timeout))
        wait_s = _int_env("PIPELINE_RANK0_WAIT_S", RANK0_WAIT_S)
        _wait_group = tdist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=wait_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def broadcast_after_wait(obj: Any, src: int = 0) -> Any:
    """``broadcast_object`` over a gloo group with a long timeout (``RANK0_WAIT_S``).

    For results that one rank computes alone for a long time (rank-0-only stages, a teacher-cache
    rank with more shards): the other ranks wait here instead of dying at the 30-minute timeout.
    """
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, group=_wait_group)
    return box[0]


def current() -> DistInfo:
    """The description of this process without initialising anything."""
    if is_distributed():
        return DistInfo(rank=tdist.get_rank(), world_size=tdist.get_world_size(),
                        local_rank=env_local_rank())
    return DistInfo()


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (pickled); a no-op in a single process."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0 (no gradient)."""
    if not is_distributed() or tdist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def cleanup() -> None:
    """Destroy the process group (and the wait group) so NCCL frees its communicators before exit."""
    global _wait_group
    if is_distributed():
        tdist.destroy_process_group()
    _wait_group = None
