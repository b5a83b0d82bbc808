"""Per-sample gradient projection between the two contrastive heads on their shared features.

RSP (g_m) and A-VID (g_a) read the same contrastive features z_c. ``split_projected(z_c)`` returns two
copies of z_c, one for each head; in the backward pass, for every sample whose A-VID gradient points
against its RSP gradient (negative dot product over the sample's z_c), the A-VID gradient loses its
component along the RSP gradient (PCGrad, Yu et al. 2020, applied to one sample's representation, as
MGDA-UB applies its task weighting to the shared representation) before the two are summed into z_c.
The forward pass is the identity: losses and metrics do not change, only what reaches h_c and f_l.
"""
from __future__ import annotations

from typing import Any

import torch


class _ProjectConflicting(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.view_as(z), z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad_m: torch.Tensor | None, grad_a: torch.Tensor | None) -> torch.Tensor | None:
        if grad_m is None or grad_a is None:
            return grad_m if grad_a is None else grad_a
        return grad_m + project_conflicting(grad_a, grad_m)


def project_conflicting(grad: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """``grad`` (B, ...) without its component along ``against`` (B, ...), for the samples where the two
    conflict (negative dot product over all but the first dimension); the other samples unchanged."""
    g, a = grad.flatten(1).float(), against.flatten(1).float()
    dot = (g * a).sum(dim=1, keepdim=True)
    scale = torch.where(dot < 0, dot / a.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-30), torch.zeros_like(dot))
    return (g - scale * a).view_as(grad).to(grad.dtype)


def split_projected(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z for the RSP head, z for the A-VID head): equal to ``z``; the A-VID copy's gradient is projected off
    the RSP copy's where they conflict, per sample (module docstring)."""
    return _ProjectConflicting.apply(z)
