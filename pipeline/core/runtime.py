"""Run-time settings with one meaning in every stage (a leaf helper: imports only pipeline helpers).

The config vocabulary ``device``, ``amp`` and ``deterministic`` appears in the teacher, pretrain,
finetune, evaluate, retrieval and linear-probe sections. Each stage used to turn it into torch
state with its own formula, and the copies drifted (``amp = "fp16"`` on a CPU raised in
pretraining but silently ran float32 in the teacher and in finetuning; finetuning ignored
``bf16`` on a CPU). Every stage now asks this module, so a setting means the same everywhere:

``device``   ``auto``: the device the process was given (``DistInfo.device``: this rank's GPU when
             there is one, else the CPU); anything else is resolved for this rank
             (``cuda`` → ``cuda:LOCAL_RANK``; ``cuda:N`` is refused under torchrun).
``amp``      ``off``: float32. ``bf16``: bfloat16 autocast on any device. ``fp16``: float16
             autocast with loss scaling, CUDA only (an error naming the key elsewhere: CPU float16
             autocast is slow and lossy). ``auto``: the fastest choice that keeps the stage's
             accuracy: for training, bf16 on GPUs that support it (no loss scaling), else fp16,
             and float32 on a CPU; for the teacher's inference, fp16 on a GPU (its softmax targets
             keep ~0.005 max error against ~0.02-0.04 in bf16) and bf16 on a CPU with native bf16.
``deterministic``  ``true``: deterministic kernels (``torch.use_deterministic_algorithms``, cuDNN
             deterministic, no autotuning) for the stage, on any device; ``false``: cuDNN
             autotuning on CUDA (fixed clip shapes). The previous settings come back afterwards.

Also here: DDP wrapping, the gloo group a CPU-side stop flag needs under NCCL, and the metric
all-reduces. "Are we distributed?" is :func:`pipeline.core.distributed.is_distributed`.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, ContextManager, Iterator

import torch
import torch.distributed as tdist
from torch import nn

from pipeline.core.distributed import DistInfo, is_distributed, resolve_device
from pipeline.core.errors import ConfigError

AMP_CHOICES = ("auto", "off", "fp16", "bf16")

__all__ = ["AMP_CHOICES", "all_reduce_mean", "all_reduce_sum", "autocast",
           "cpu_has_native_bf16", "ddp_buffer_kwargs", "deterministic_mode", "is_distributed", "resolve_amp",
           "stage_device", "stop_flag_group", "wrap_ddp"]


def stage_device(setting: str, dist: DistInfo) -> str:
    """The device a stage runs on, from its ``<section>.device`` setting (see the module docstring)."""
    return dist.device if setting == "auto" else resolve_device(setting, dist.local_rank)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _auto_amp(dev: torch.device, inference: bool) -> torch.dtype | None:
    if dev.type == "cuda":
        if inference:
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On a CPU, bf16 only pays off with native bf16 units, measured for the teacher's batched
    # forward (bench/teacher_cache.py); training stays float32 there (reference numbers).
    return torch.bfloat16 if inference and cpu_has_native_bf16() else None


def resolve_amp(setting: str, device: str | torch.device, *, key: str = "amp",
                inference: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device`` (None: float32); ``key`` names it in errors.

    ``inference`` only changes what ``auto`` picks (see the module docstring); the explicit
    settings mean the same in every stage.
    """
    dev = torch.device(device)
    if setting == "off":
        return None
    if setting == "auto":
        return _auto_amp(dev, inference)
    if setting == "fp16":
        if dev.type != "cuda":
            raise ConfigError(f"{key} = 'fp16' needs a CUDA device (this stage runs on {dev}); "
                              f"use 'bf16' or 'off' on CPU")
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise ConfigError(f"{key}: {setting!r} is not one of {', '.join(map(repr, AMP_CHOICES))}")


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: str | torch.device) -> Iterator[None]:
    """Deterministic kernels (``enabled``) or cuDNN autotuning (CUDA) for the block; then the old settings.

    ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) and left: cuBLAS reads it once per process.
    """
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


def ddp_buffer_kwargs(sync_each_step: bool) -> dict[str, Any]:
    """DDP's keyword for "broadcast buffers before every forward": ``forward_sync_buffers`` where this torch
    has it (``broadcast_buffers`` is deprecated there and warns once per rank), else ``broadcast_buffers``.

    Either way buffers are equal on every rank after wrapping when this torch syncs them at set-up
    (``forward_sync_buffers``): callers that keep rank-local buffers restore them after wrapping.
    """
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": sync_each_step}


def wrap_ddp(module: nn.Module, dist: DistInfo, device: str | torch.device, **kwargs: Any) -> nn.Module:
    """``module`` in DistributedDataParallel when ``dist`` spans several ranks (this rank's GPU, or CPU/gloo).

    ``broadcast_buffers=...`` is passed on under the name this torch wants (:func:`ddp_buffer_kwargs`).
    """
    if not dist.distributed:
        return module
    if "broadcast_buffers" in kwargs:
        sync = bool(kwargs.pop("broadcast_buffers"))
        kwargs = {**kwargs, **ddp_buffer_kwargs(sync)}
    dev = torch.device(device)
    return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                               **kwargs)


def stop_flag_group(dist: DistInfo, device: str | torch.device) -> Any:
    """A gloo group for the CPU-side stop flag when ranks train on CUDA (NCCL cannot carry CPU tensors)."""
    if dist.distributed and torch.device(device).type == "cuda":
        return tdist.new_group(backend="gloo")
    return None


def all_reduce_mean(vec: torch.Tensor) -> list[float]:
    """A metric vector averaged over ranks (one all-reduce), as floats; the vector itself is unchanged."""
    if is_distributed():
        vec = vec.clone()
        tdist.all_reduce(vec, op=tdist.ReduceOp.SUM)
        vec /= tdist.get_world_size()
    return [float(v) for v in vec.cpu()]


def all_reduce_sum(values: list[float], device: str | torch.device) -> list[float]:
    """Per-position sums over ranks (float64, one all-reduce on ``device``); ``values`` in one process."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()
