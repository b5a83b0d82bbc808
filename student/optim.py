"""SGD and per-iteration learning-rate schedules as closed-form functions of the step.

The schedules are :class:`torch.optim.lr_scheduler.LambdaLR` over small callable objects (their
fields land in the scheduler's ``state_dict``), so the learning rate at step ``k`` depends on
``k`` alone and a resumed run continues exactly.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

REFERENCE_BATCH = 64


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """Linear scaling (RSPNet): ``base_lr`` is for a global batch of ``reference_batch`` clips."""
    return base_lr * global_batch / reference_batch


def _trainable(params: Iterable[torch.nn.Parameter] | torch.nn.Module, who: str) -> list[torch.nn.Parameter]:
    """The parameters (of a module, or given) that require gradients; refuses none."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError(f"{who}: no trainable parameters")
    return trainable


def param_groups(params: Iterable[torch.nn.Parameter] | torch.nn.Module, lr: float, who: str,
                 slow_modules: Sequence[str] = (), slow_lr_ratio: float = 1.0) -> list[dict[str, Any]]:
    """One group of every trainable parameter, or, with ``slow_modules`` (names of a module's children,
    e.g. the student's ``h_c``, ``g_a``), two: the rest at ``lr`` (first: ``current_lr`` reads it) and
    the named modules' parameters at ``lr * slow_lr_ratio``. Why: in the demo's budget A-VID learns
    only at about a tenth of the rate RSP and the parsing need (pretrain.slow_modules)."""
    if not slow_modules:
        return [{"params": _trainable(params, who)}]
    if not isinstance(params, torch.nn.Module):
        raise ValueError(f"{who}: slow_modules {list(slow_modules)} need a module, not a list of parameters")
    slow: dict[int, torch.nn.Parameter] = {}
    for name in slow_modules:
        module = getattr(params, name, None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{who}: slow module {name!r} is not a module of {type(params).__name__} "
                             f"(it may be off in this model, e.g. g_h without KD)")
        slow.update((id(p), p) for p in module.parameters() if p.requires_grad)
    rest = [p for p in _trainable(params, who) if id(p) not in slow]
    groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
    return groups + [{"params": list(slow.values()), "lr": lr * slow_lr_ratio}]


def build_sgd(params: Iterable[torch.nn.Parameter] | torch.nn.Module, lr: float, momentum: float = 0.9,
              weight_decay: float = 1e-4, slow_modules: Sequence[str] = (),
              slow_lr_ratio: float = 1.0) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every trainable parameter (as RSPNet/MoCo)."""
    return torch.optim.SGD(param_groups(params, lr, "build_sgd", slow_modules, slow_lr_ratio), lr=lr,
                           momentum=momentum, weight_decay=weight_decay)


def build_adamw(params: Iterable[torch.nn.Parameter] | torch.nn.Module, lr: float,
                weight_decay: float = 1e-4, slow_modules: Sequence[str] = (),
                slow_lr_ratio: float = 1.0) -> torch.optim.AdamW:
    """AdamW on every trainable parameter: learns the relative-speed task within the demo's few hundred
    steps, where momentum SGD at RSPNet's rate does not (docs/results.md section 4)."""
    return torch.optim.AdamW(param_groups(params, lr, "build_adamw", slow_modules, slow_lr_ratio), lr=lr,
                             weight_decay=weight_decay)


class CosineFactor:
    """lr multiplier at step k: cosine from 1 to ``final_ratio`` over ``total_steps``, no warm-up."""

    def __init__(self, total_steps: int, final_ratio: float = 1e-3) -> None:
        if total_steps < 1:
            raise ValueError(f"cosine schedule needs total_steps >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.final_ratio = float(final_ratio)

    def __call__(self, step: int) -> float:
        t = min(max(step, 0), self.total_steps) / self.total_steps
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class PhasedCosineFactor(CosineFactor):
    """The cosine multiplier, times ``before`` for steps below ``start_step``: a parameter group that runs at
    another rate until a phase starts (pretrain.avid_start_epoch: the slow group at the full rate first)."""

    def __init__(self, total_steps: int, start_step: int, before: float, final_ratio: float = 1e-3) -> None:
        super().__init__(total_steps, final_ratio)
        self.start_step, self.before = int(start_step), float(before)

    def __call__(self, step: int) -> float:
        return super().__call__(step) * (self.before if step < self.start_step else 1.0)


class MultiStepFactor:
    """lr multiplier at step k: ``gamma`` to the number of milestones (in steps) already passed."""

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, final_ratio: float = 1e-3) -> LambdaLR:
    """Per-iteration cosine decay to ``lr * final_ratio`` (RSPNet: lr/1000);
    call ``.step()`` after each optimizer step."""
    return LambdaLR(optimizer, CosineFactor(total_steps, final_ratio))


def phased_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, start_step: int,
                           last_group_before: float, final_ratio: float = 1e-3) -> LambdaLR:
    """``cosine_schedule``, with the last parameter group's rate times ``last_group_before`` until ``start_step``."""
    factors: list[Any] = [CosineFactor(total_steps, final_ratio) for _ in optimizer.param_groups[:-1]]
    factors.append(PhasedCosineFactor(total_steps, start_step, last_group_before, final_ratio))
    return LambdaLR(optimizer, factors)


def multistep_schedule(optimizer: torch.optim.Optimizer, milestones_steps: Sequence[int],
                       gamma: float = 0.1) -> LambdaLR:
    """Step decay at the given iteration numbers (e.g. epochs × steps per epoch)."""
    return LambdaLR(optimizer, MultiStepFactor(milestones_steps, gamma))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
