"""MoCo machinery for the contrastive branch: momentum key encoder, key queue, shuffle-BN."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.core.distributed import all_gather_tensor
from pipeline.core.errors import ConfigError


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere (the optimizer and DDP ignore it)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(q_modules: Sequence[nn.Module], k_modules: Sequence[nn.Module], m: float) -> None:
    """θ_k ← m·θ_k + (1−m)·θ_q for every parameter; buffers (BN running stats) are copied.

    ``q_modules[i]`` and ``k_modules[i]`` must have the same structure.
    """
    if len(q_modules) != len(k_modules):
        raise ValueError("momentum_update: q_modules and k_modules differ in length")
    for q_mod, k_mod in zip(q_modules, k_modules):
        q_params, k_params = list(q_mod.parameters()), list(k_mod.parameters())
        q_bufs, k_bufs = list(q_mod.buffers()), list(k_mod.buffers())
        if len(q_params) != len(k_params) or len(q_bufs) != len(k_bufs):
            raise ValueError(f"momentum_update: {type(q_mod).__name__} and {type(k_mod).__name__} differ in structure")
        for pq, pk in zip(q_params, k_params):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
        for bq, bk in zip(q_bufs, k_bufs):
            bk.copy_(bq)


class MomentumEncoder(nn.Module):
    """The MoCo key encoder: frozen deep copies of (f_l, h_c, g_m, g_a).

    ``forward(x)`` → (emb_m, emb_a), the key clip's RSP and A-VID embeddings. It is never
    trained by backprop; ``update(...)`` moves it towards the query encoder.
    """

    def __init__(self, f_l: nn.Module, h_c: nn.Module, g_m: nn.Module, g_a: nn.Module) -> None:
        super().__init__()
        self.f_l = frozen_copy(f_l)
        self.h_c = frozen_copy(h_c)
        self.g_m = frozen_copy(g_m)
        self.g_a = frozen_copy(g_a)

    def parts(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return self.f_l, self.h_c, self.g_m, self.g_a

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.h_c(self.f_l(x))
        return self.g_m(z), self.g_a(z)

    @torch.no_grad()
    def update(self, f_l: nn.Module, h_c: nn.Module, g_m: nn.Module, g_a: nn.Module, m: float) -> None:
        momentum_update((f_l, h_c, g_m, g_a), self.parts(), m)


class KeyQueue(nn.Module):
    """A ring buffer of the last ``size`` keys, rows of ``queue`` (size, dim), unit-norm, with the
    video id of each row in ``ids`` (-1: an initial random row, from no video).

    ``queue``, ``ids`` and ``ptr`` are registered buffers, so checkpoints hold them and DDP keeps
    them in sync. Starts with random unit vectors (as MoCo does). ``enqueue`` wraps around when
    a batch does not divide ``size``; in DDP the caller gathers the keys (and ids) of every rank
    first (``pipeline.core.distributed.all_gather_tensor``) so every rank enqueues the same rows.

    Why the ids: when the queue is not much smaller than the dataset (a small pretraining set, or
    many epochs' worth of a small one), a query meets keys of its own video among its
    "negatives" and the instance-discrimination loss pushes it away from itself.
    """

    queue: torch.Tensor  # buffers (register_buffer), declared for the type checker
    ids: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"KeyQueue: dim and size must be >= 1, got dim={dim}, size={size}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Overwrite the oldest rows with ``keys`` (n, dim) and their video ``ids`` (n,) (-1 when None);
        only the last ``size`` are kept if n > size."""
        if keys.dim() != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"KeyQueue.enqueue: keys must be (n, {self.queue.shape[1]}), got {tuple(keys.shape)}")
        if ids is None:
            ids = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        if ids.shape != (keys.shape[0],):
            raise ValueError(f"KeyQueue.enqueue: ids must be ({keys.shape[0]},), got {tuple(ids.shape)}")
        keys, ids = keys.detach().to(self.queue.dtype), ids.to(self.ids.device, torch.long)
        n, size = keys.shape[0], self.size
        start = int(self.ptr)
        if n >= size:  # the last `size` keys, placed as if written one by one
            keys, ids, start = keys[n - size:], ids[n - size:], (start + n - size) % size
            n = size
        idx = (torch.arange(n, device=self.queue.device) + start) % size
        self.queue[idx] = keys
        self.ids[idx] = ids
        self.ptr.fill_((start + n) % size)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached copies of (queue, ids) to compute losses with (``enqueue`` later writes in place)."""
        return self.queue.detach().clone(), self.ids.detach().clone()


def trimmed_queue_size(queue_size: int, global_batch: int) -> int:
    """The largest multiple of the global batch not above ``queue_size`` (RSPNet/MoCo require
    ``K % batch == 0`` so that every enqueue writes one contiguous, never-wrapping block)."""
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    trimmed = (queue_size // global_batch) * global_batch
    if trimmed < global_batch:
        raise ConfigError(f"pretrain.queue_size = {queue_size} is smaller than one global batch of {global_batch} "
                          f"clips: raise it to at least {global_batch}")
    return trimmed


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def batch_shuffle_ddp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN, step 1: hand this rank a random slice of the GLOBAL batch of key clips.

    Why: BN normalises with the statistics of the clips that share a rank. If the key encoder
    saw exactly the samples the query encoder sees on that rank, the two BN batches would carry
    matching statistics, a signal the model can use to find its positive without learning a
    representation. Shuffling the keys across ranks before the key encoder (and unshuffling its
    output) breaks that link (MoCo). Returns (this rank's shuffled clips, the permutation that
    undoes it). Every rank must pass the same batch size. In a single process the permutation is
    within the batch, which leaves BN statistics unchanged; the code path is kept identical.
    """
    rank, world = _world()
    if world == 1:
        perm = torch.randperm(x.shape[0], device=x.device)
        return x[perm], torch.argsort(perm)
    x_all = all_gather_tensor(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    return x_all[perm.view(world, -1)[rank]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle_ddp(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN, step 2: gather the key-encoder outputs and take back this rank's own rows."""
    rank, world = _world()
    if world == 1:
        return x[idx_unshuffle]
    x_all = all_gather_tensor(x)
    return x_all[idx_unshuffle.view(world, -1)[rank]]
