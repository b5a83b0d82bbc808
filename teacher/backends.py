"""Teacher backends: whatever turns an anchor frame into a softmax parsing map over the whole frame.

A backend names its label set, says what it needs per clip (a decoded BGR frame, or — for the
synthetic dataset — the rendered part mask), provides a picklable loader that DataLoader
workers call to fetch those inputs for one video, and maps a batch of inputs to (N, C, S, S)
probabilities on the CPU. The cache stage knows nothing else about the teacher.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from pipeline.core.errors import ConfigError
from pipeline.core.runtime import cpu_has_native_bf16  # noqa: F401  (re-exported: bench/teacher_cache.py)
from pipeline.core.runtime import resolve_amp as runtime_amp
from teacher.labels import LABEL_SETS, input_size as label_input_size

log = logging.getLogger(__name__)


Loader = Callable[[Path, Sequence[int]], np.ndarray]


class TeacherBackend(Protocol):
    """What the cache stage needs from a teacher."""

    name: str           # recorded in every shard ("schp", "rendered")
    label_set: str      # "lip" | "atr" | "pascal"
    labels: list[str]
    num_classes: int
    needs_frames: bool  # True: inputs are BGR uint8 frames; False: uint8 part masks
    map_size: int

    @property
    def loader(self) -> Loader:
        """``loader(video_path, frames) -> (len(frames), H, W[, 3]) uint8``; module-level, so it pickles."""
        ...

    def maps(self, batch: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, C, S, S) float32 probabilities on the CPU, frame coordinates covering each whole input."""
        ...


def load_frames_bgr(path: Path, frames: Sequence[int]) -> np.ndarray:
    """Anchor frames of one video, BGR uint8 (N, H, W, 3) (SCHP's input channel order)."""
    from data_manifests.video import read_frames

    return read_frames(path, list(frames), bgr=True)


def load_masks(path: Path, frames: Sequence[int]) -> np.ndarray:
    """Rendered part masks of one synthetic video at the anchor frames, uint8 (N, H, W)."""
    from data_manifests.synthetic import load_part_masks

    return load_part_masks(path, list(frames))


def resolve_amp(amp: str, device: str | torch.device) -> torch.dtype | None:
    """``teacher.amp`` → autocast dtype: :func:`pipeline.core.runtime.resolve_amp` for inference
    ('auto': fp16 on a GPU; bf16 on a CPU with native bf16, else float32)."""
    return runtime_amp(amp, device, key="teacher.amp", inference=True)


class SchpBackend:
    """The SCHP network on anchor frames: letterbox → network → logits warped back → softmax."""

    name = "schp"
    needs_frames = True

    def __init__(self, checkpoint: str | Path, labels: str, *, map_size: int, input_size: int = 0,
                 device: str = "cpu", amp: str = "off", flip: bool = False, sha256: str | None = None) -> None:
        from teacher.checkpoint import load_schp

        if not str(checkpoint):
            raise ConfigError("teacher.checkpoint is empty: set it to a released SCHP checkpoint (.pth) for "
                              "the 'schp' backend, e.g. "
                              "--set teacher.checkpoint=/path/to/exp-schp-201908261155-lip.pth")
        self.label_set = labels
        self.labels = list(LABEL_SETS[labels])
        self.num_classes = len(self.labels)
        self.map_size = map_size
        self.input_size = input_size or label_input_size(labels)
        self.device = device
        self.amp_dtype = resolve_amp(amp, device)
        self.flip = flip
        self.model = load_schp(checkpoint, labels, device, sha256=sha256)
        if self.amp_dtype is not None:
            # NHWC convolutions: what half-precision kernels are fastest with (bench/teacher_cache.py).
            self.model = self.model.to(memory_format=torch.channels_last)
        log.info("SCHP teacher: %s labels, input %d², maps %d², device %s, autocast %s, flip test %s",
                 labels, self.input_size, map_size, device, self.amp_dtype, flip)

    @property
    def loader(self) -> Loader:
        return input_loader(self.name)

    def maps(self, batch: Sequence[np.ndarray]) -> torch.Tensor:
        from teacher.preprocess import parse_frames

        out = parse_frames(self.model, list(batch), self.input_size, self.map_size, self.flip,
                           amp_dtype=self.amp_dtype)
        return out.float().cpu()


class RenderedBackend:
    """Soft maps from the synthetic dataset's rendered part masks (Pascal-Person-Part labels)."""

    name = "rendered"
    needs_frames = False
    label_set = "pascal"

    def __init__(self, *, map_size: int, softness: float) -> None:
        from teacher.rendered import rendered_maps

        self.labels = list(LABEL_SETS["pascal"])
        self.num_classes = len(self.labels)
        self.map_size = map_size
        self.softness = softness
        try:  # surface a bad setting now, not as a failure of the first batch
            rendered_maps(np.zeros((1, 2, 2), np.uint8), self.num_classes, map_size, softness)
        except ValueError as exc:
            raise ConfigError(f"teacher config (rendered backend): {exc}; check teacher.softness and "
                              f"teacher.map_size") from None

    @property
    def loader(self) -> Loader:
        return input_loader(self.name)

    def maps(self, batch: Sequence[np.ndarray]) -> torch.Tensor:
        from teacher.rendered import rendered_maps

        shapes = {m.shape for m in batch}
        if len(shapes) == 1:
            return rendered_maps(np.stack(batch), self.num_classes, self.map_size, self.softness).float().cpu()
        return torch.cat([rendered_maps(m[None], self.num_classes, self.map_size, self.softness).float().cpu()
                          for m in batch])


def backend_labels(backend: str, labels: str) -> tuple[str, list[str]]:
    """(label set, label names) a backend will produce, known before any model is loaded."""
    if backend == "rendered":
        return "pascal", list(LABEL_SETS["pascal"])
    if backend == "schp":
        return labels, list(LABEL_SETS[labels])
    raise ConfigError(f"teacher.backend: unknown backend {backend!r}; expected 'schp' or 'rendered'")


def input_loader(backend: str) -> Loader:
    """The per-video input loader of a backend, known before the backend (and its model) is built."""
    if backend == "rendered":
        return load_masks
    if backend == "schp":
        return load_frames_bgr
    raise ConfigError(f"teacher.backend: unknown backend {backend!r}; expected 'schp' or 'rendered'")


def make_backend(backend: str, *, checkpoint: str = "", labels: str = "lip", map_size: int = 64,
                 input_size: int = 0, device: str = "cpu", amp: str = "off", flip: bool = False,
                 softness: float = 0.5, sha256: str | None = None) -> TeacherBackend:
    """Build the named backend (the SCHP model is loaded here, on ``device``)."""
    if backend == "schp":
        return SchpBackend(checkpoint, labels, map_size=map_size, input_size=input_size, device=device,
                           amp=amp, flip=flip, sha256=sha256)
    if backend == "rendered":
        if labels != "pascal":
            log.info("rendered teacher: maps use the Pascal-Person-Part labels (teacher.labels=%r ignored)", labels)
        return RenderedBackend(map_size=map_size, softness=softness)
    raise ConfigError(f"teacher.backend: unknown backend {backend!r}; expected 'schp' or 'rendered'")
