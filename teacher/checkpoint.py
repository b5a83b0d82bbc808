"""Loading SCHP's released checkpoints into the plain-PyTorch network, with clear errors."""
from __future__ import annotations


import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import CheckpointError
from pipeline.core.fingerprint import sha256_file
from teacher.labels import LABEL_SETS, check_label_set
from teacher.norm import ABNNorm
from teacher.schp import AugmentCE2P, build_schp

log = logging.getLogger(__name__)

# The keys whose first dimension is the class count (they alone differ between LIP/ATR/Pascal).
CLASS_KEYS = ("decoder.conv4.weight", "decoder.conv4.bias", "fushion.3.weight", "fushion.3.bias")
_LABELS_BY_CLASSES = {len(v): k for k, v in LABEL_SETS.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with any ``module.`` prefix removed (``{"state_dict": ...}`` or bare)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SCHP checkpoint {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle means "not a usable checkpoint"
        raise CheckpointError(
            f"SCHP checkpoint {path}: not a PyTorch checkpoint readable with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"SCHP checkpoint {path}: expected a dict, got {type(obj).__name__}")
    state = obj["state_dict"] if "state_dict" in obj else obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        top = sorted(map(str, obj.keys()))[:8]
        raise CheckpointError(
            f"SCHP checkpoint {path}: no 'state_dict' of tensors found (top-level keys: {top})"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"SCHP checkpoint {path}: {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]}); the file "
                              f"is damaged or from a diverged run: use the released checkpoint")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def checkpoint_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """Class count read from ``decoder.conv4.weight`` (None when absent)."""
    w = state.get("decoder.conv4.weight")
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim >= 1 else None


def infer_labels(state: Mapping[str, torch.Tensor]) -> str:
    """The label set matching a (prefix-stripped) state dict: 20 → lip, 18 → atr, 7 → pascal."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    n = checkpoint_classes(state)
    if n not in _LABELS_BY_CLASSES:
        raise CheckpointError(
            f"cannot infer the label set: decoder.conv4.weight gives {n} classes; "
            f"known: {sorted(_LABELS_BY_CLASSES.items())}"
        )
    return _LABELS_BY_CLASSES[n]


def _check_keys(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    got = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"SCHP checkpoint {path}: keys do not match the SCHP (AugmentCE2P ResNet-101) network: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"checkpoint has {len(got)} tensors, SCHP has {len(expected)}"
        )
    own = model.state_dict()
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in sorted(expected)
           if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"SCHP checkpoint {path}: {len(bad)} tensors have the wrong shape, e.g. {bad[:3]}")


def load_schp(path: str | Path, labels: str, device: str | torch.device = "cpu", *,
              sha256: str | None = None) -> AugmentCE2P:
    """The SCHP network for label set ``labels`` with the checkpoint's weights, in eval mode on ``device``.

    ``sha256``: the file's digest when the caller already has it (the stage engine caches it), so a
    267 MB checkpoint is not hashed again just for the log line.
    """
    path = Path(path)
    check_label_set(labels)
    state = read_state_dict(path)
    n_expected = len(LABEL_SETS[labels])
    n_ckpt = checkpoint_classes(state)
    if n_ckpt is not None and n_ckpt != n_expected:
        hint = f" — use --labels {_LABELS_BY_CLASSES[n_ckpt]}" if n_ckpt in _LABELS_BY_CLASSES else ""
        raise CheckpointError(
            f"SCHP checkpoint {path} has {n_ckpt} classes (decoder.conv4.weight) but labels "
            f"{labels!r} has {n_expected}{hint}"
        )
    with torch.device("meta"):  # skip random init of 66.7 M parameters: the checkpoint replaces them
        model = build_schp(n_expected)
    _check_keys(path, model, state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    negative = sum(int((m.weight < 0).sum()) for m in model.modules() if isinstance(m, ABNNorm))
    log.info("loaded SCHP checkpoint %s (sha256 %s, labels %s, %d classes, %d negative norm weights)",
             path, sha256 or sha256_file(path), labels, n_expected, negative)
    return model.to(device).eval()
