"""The colour half of the pretraining augmentation, batched on the training device.

Why: on real Kinetics clips a worker core spends about a third of each item on colour jitter,
grayscale and normalisation in float32, then ships float32 clips (7.2 MB per sample). With
``pretrain.augment_device = "gpu"`` the worker stops after the crop, resize and flip (which must
stay there: the teacher map is cut with the same box and flip), ships uint8 clips plus each clip's
colour parameters (:func:`student.transforms.colour_vector`, drawn from the item's generator, so an
item stays a pure function of ``(seed, epoch, index)`` and resume stays exact), and
:func:`colour_batch` applies them here, batched. The formulas are the ones in
:mod:`student.transforms` (torchvision's), called with per-clip tensor factors, so both settings give
the same tensors to float tolerance (tests/test_gpu_augment.py).

The per-clip random order of the four jitter ops is honoured position by position: at position j,
the clips whose j-th op is k get op k. Index sets are computed from the parameters on the CPU
(where the DataLoader delivers them), so nothing here waits for the device.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from student.transforms import (COLOUR_FIELDS, IMAGENET_MEAN, IMAGENET_STD, adjust_brightness, adjust_contrast,
                                adjust_hue, adjust_saturation, grayscale)

_JITTER = COLOUR_FIELDS.index("jitter")
_ORDER = COLOUR_FIELDS.index("order0")
_FACTOR = COLOUR_FIELDS.index("brightness")  # brightness, contrast, saturation, hue follow in op order
_GRAY = COLOUR_FIELDS.index("grayscale")


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # hue acts on (n, T, H, W) planes; torchvision takes a tensor of per-sample shifts, though typed float
    return adjust_hue(x, shift.view(-1, *([1] * (x.dim() - 2))))  # type: ignore[arg-type]


def _scaled(op: Callable[[torch.Tensor, Any], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda x, f: op(x, f.view(-1, *([1] * (x.dim() - 1))))


_OPS = (_scaled(adjust_brightness), _scaled(adjust_contrast), _scaled(adjust_saturation), _hue)


def _check(clips: torch.Tensor, params: torch.Tensor) -> None:
    if clips.dtype != torch.uint8 or clips.dim() != 5 or clips.shape[1] != 3:
        raise ValueError(f"colour_batch: expected uint8 clips (B, 3, T, H, W), got {clips.dtype} {tuple(clips.shape)}")
    if params.shape != (clips.shape[0], len(COLOUR_FIELDS)):
        raise ValueError(f"colour_batch: expected parameters ({clips.shape[0]}, {len(COLOUR_FIELDS)}), "
                         f"got {tuple(params.shape)}")


def colour_batch(clips: torch.Tensor, params: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 clips (B, 3, T, H, W) on any device + CPU parameters (B, len(COLOUR_FIELDS)) → normalised float32
    clips (B, 3, T, H, W) on the clips' device: colour jitter in each clip's order, grayscale, normalisation."""
    _check(clips, params)
    params = params.detach().to("cpu", torch.float64)
    dev = clips.device
    x = clips.permute(0, 2, 1, 3, 4).float().div_(255.0)  # (B, T, 3, H, W): the per-frame layout of transforms
    factors = params[:, _FACTOR:_FACTOR + 4].to(dev, torch.float32, non_blocking=True)
    jitter = params[:, _JITTER] > 0.5
    for position in range(4):
        for op in range(4):
            sel = torch.nonzero(jitter & (params[:, _ORDER + position] == op)).squeeze(1)
            if op == 3:
                sel = sel[params[sel, _FACTOR + 3] != 0.0]  # as transforms: a zero hue shift is skipped
            if sel.numel():
                sel = sel.to(dev, non_blocking=True)
                x[sel] = _OPS[op](x[sel], factors[sel, op])
    gray = torch.nonzero(params[:, _GRAY] > 0.5).squeeze(1)
    if gray.numel():
        gray = gray.to(dev, non_blocking=True)
        x[gray] = grayscale(x[gray]).expand(-1, -1, 3, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 1, 3, 1, 1)
    return ((x - m) / s).permute(0, 2, 1, 3, 4)


def batch_clips(batch: dict[str, Any], device: torch.device, augment_device: str,
                memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, ...]:
    """(query, key_pos, key_neg) of a pretraining batch on ``device``, finished according to ``augment_device``.

    ``"cpu"``: the worker already produced normalised float clips; ``"gpu"``: uint8 clips and their
    ``query_colour`` / ``key_colour`` parameters (key_pos and key_neg share the key's).
    """
    names = ("query", "key_pos", "key_neg")
    if augment_device == "cpu":
        return tuple(batch[n].to(device, non_blocking=True).contiguous(memory_format=memory_format) for n in names)
    if augment_device != "gpu":
        raise ValueError(f"pretrain.augment_device: {augment_device!r} is not one of 'cpu', 'gpu'")
    colours = {"query": batch["query_colour"], "key_pos": batch["key_colour"], "key_neg": batch["key_colour"]}
    return tuple(colour_batch(batch[n].to(device, non_blocking=True), colours[n])
                 .contiguous(memory_format=memory_format) for n in names)


def avid_key_clip(batch: dict[str, Any], device: torch.device, augment_device: str,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor | None:
    """The A-VID key of a pretraining batch (``pretrain.avid_own_colour``), or None when the batch has none:
    ``"cpu"``: the worker's finished ``key_avid`` clips; ``"gpu"``: ``key_pos``'s uint8 clips with the
    key's own colour draw (``avid_colour``)."""
    if augment_device == "cpu":
        clip = batch.get("key_avid")
        return None if clip is None else clip.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    if "avid_colour" not in batch:
        return None
    return colour_batch(batch["key_pos"].to(device, non_blocking=True),
                        batch["avid_colour"]).contiguous(memory_format=memory_format)
