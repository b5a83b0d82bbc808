"""What a build would fail on that the config alone already shows, so ``--dry-run`` says it.

A dry run used to print "would build pretrain:kinetics400" for ``pretrain.amp = "fp16"`` on a CPU,
and the build then failed minutes later (after the teacher cache). Each check here is the same
function the build itself calls (device and autocast resolution), or a file the build opens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, UserError

# stage kind -> (config section, amp used for inference)
SECTIONS = {"teacher-cache": ("teacher", True), "pretrain": ("pretrain", False), "finetune": ("finetune", False),
            "evaluate": ("evaluate", True), "retrieval": ("retrieval", True), "linear-probe": ("linear_probe", True)}


def _device(section: str, setting: str) -> str:
    import torch

    from pipeline.core import distributed
    from pipeline.core.runtime import stage_device

    device = stage_device(setting, distributed.current())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{section}.device = {setting!r}, but this machine has no CUDA device; "
                          f"use 'auto' or 'cpu'")
    return device


def problems(kind: str, cfg: Any) -> list[str]:
    """Every error a build of a ``kind`` stage would hit that the config shows; [] when none."""
    from pipeline.core.runtime import resolve_amp

    if kind not in SECTIONS:
        return []
    section, inference = SECTIONS[kind]
    sec = getattr(cfg, section)
    found: list[str] = []
    try:
        device = _device(section, sec.device)
        if hasattr(sec, "amp"):
            resolve_amp(sec.amp, device, key=f"{section}.amp", inference=inference)
    except UserError as exc:
        found.append(str(exc))
    if kind == "pretrain" and cfg.pretrain.init_from and not Path(cfg.pretrain.init_from).is_file():
        found.append(f"pretrain.init_from: {cfg.pretrain.init_from} does not exist")
    if kind == "teacher-cache" and cfg.teacher.backend == "schp":
        ckpt = cfg.teacher.checkpoint
        if not ckpt:
            found.append("teacher.checkpoint is empty: the 'schp' backend needs a released SCHP checkpoint (.pth)")
        elif not Path(ckpt).is_file():
            found.append(f"teacher.checkpoint: {ckpt} does not exist")
    return found


def check(stage_key: str, kind: str, cfg: Any) -> None:
    """Raise one :class:`ConfigError` naming the stage and every problem found."""
    found = problems(kind, cfg)
    if found:
        raise ConfigError(f"{stage_key} would fail: {'; '.join(found)}")


__all__ = ["check", "problems"]
