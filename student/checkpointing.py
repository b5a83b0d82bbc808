"""Resumable training state: atomic checkpoints, RNG capture/restore, graceful SIGTERM/SIGINT.

A checkpoint is one ``torch.save`` dict that loads under ``weights_only=True``: only tensors,
numbers, strings, lists, dicts and tuples (the numpy RNG state is stored as a tensor, never as a
numpy object). Writes go to a temporary file in the same folder, are fsync'ed, then renamed over
the old one, so a crash or a kill mid-write leaves the previous checkpoint intact.

Cluster schedulers send SIGTERM before killing a job (and users press Ctrl-C): ``GracefulStop``
turns either into a flag that the training loop checks at the next step boundary, saves, and
raises :class:`TrainingInterrupted`, which the CLI reports as "interrupted, checkpoint saved,
rerun to resume".
"""
from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from pipeline.core.distributed import is_distributed
from pipeline.core.errors import CheckpointError, NonFiniteError, disk_full_error, is_disk_full
from pipeline.core.files import atomic_path


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; rerunning the same command resumes."""

    def __init__(self, signal_name: str, checkpoint: Path, epoch: int, step: int) -> None:
        self.signal_name = signal_name
        self.checkpoint = Path(checkpoint)
        self.epoch = epoch
        self.step = step
        super().__init__(f"interrupted by {signal_name} at epoch {epoch}, step {step}; checkpoint saved "
                         f"to {checkpoint}; rerun the same command to resume")


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and the current CUDA device's generator state, weights_only-safe.

    Only the current device: asking for every device's state would create a CUDA context on
    every GPU from every rank (hundreds of MB each).
    """
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (the CUDA state goes to the current device)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0].cpu())


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _first_non_finite(obj: Any, prefix: str = "") -> str | None:
    """The key of the first floating tensor in ``obj`` (nested dicts/lists) holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return prefix or "<tensor>" if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def non_finite_loss(what: str, epoch: int, step: int, checkpoint: Path) -> NonFiniteError:
    """The error a training loop raises when its (all-reduced) loss is NaN or inf: nothing is marked
    done, and the checkpoint on disk is the last finite state (``save_checkpoint`` never writes another)."""
    kept = (f"{checkpoint} holds the last finite state saved before it" if Path(checkpoint).is_file()
            else "no checkpoint had been saved yet")
    return NonFiniteError(f"{what}: the loss became non-finite (NaN or inf) by epoch {epoch}, step {step}; training "
                          f"stopped and nothing is marked done; {kept}. Lower the learning rate or check the "
                          f"inputs, then rerun")


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

    A state holding NaN/inf is refused (the previous checkpoint stays the last finite one), and a
    full disk is one clear error naming the file (torch.save alone says "unexpected pos").
    """
    path = Path(path)
    bad = _first_non_finite(state)
    if bad is not None:
        raise NonFiniteError(f"{path}: not saved: {bad} holds NaN or inf (training diverged); the previous "
                             f"checkpoint, if any, is the last finite state. Lower the learning rate, then rerun")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc, "saving a checkpoint") from exc
        raise
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a file that is not a checkpoint gets an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated/foreign files all become one clear error
        raise CheckpointError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {exc}); "
                              f"delete it to start over") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------

class GracefulStop:
    """Within ``with GracefulStop() as stop:``, SIGTERM/SIGINT only set ``stop.requested``.

    A second SIGINT while a stop is pending restores the default behaviour (KeyboardInterrupt),
    so an impatient user can still break out. Outside the main thread (where handlers cannot be
    installed) the context does nothing but can still be triggered with :meth:`request`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def request(self, name: str = "request") -> None:
        self.requested = True
        self.signal_name = self.signal_name or name

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, group: Any = None) -> bool:
        """True on every rank when any rank was asked to stop: one tiny CPU all-reduce under DDP.

        The tensor lives on the CPU, so ``group`` must be a gloo group (the default group on CPU;
        under NCCL pass ``torch.distributed.new_group(backend="gloo")``), which also avoids a GPU
        synchronisation every step.
        """
        if not is_distributed() or tdist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=group)
        if flag.item() and not self.requested:
            self.request("a signal on another rank")
        return bool(flag.item())
