"""The norm layer of SCHP's released checkpoints, in plain PyTorch.

SCHP trained with in-place activated batch norm (a CUDA extension). Its affine scale is not the
stored ``weight`` but ``|weight| + 1e-5`` and its eps is 1e-5; some layers also apply a leaky
ReLU (slope 0.01) as part of the norm. Using ``nn.BatchNorm2d`` with the raw weights silently
gives wrong parsings (about 3.5 % pixel agreement on a checkpoint with negative weights), so this
subclass keeps BatchNorm2d's parameter names (the checkpoint keys load strictly) and changes only
the arithmetic.

The official kernel takes eps as a C ``float``, so both uses (``|weight| + eps`` and
``var + eps``) see float32's 1e-5, 9.999999747378752e-06; that is the value used here, which
matters only when the network runs in float64 (the comparisons against SCHP's code).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ABN_EPS = float(np.float32(1e-5))  # 9.999999747378752e-06: the float the official kernel receives
LEAKY_SLOPE = 0.01


class ABNNorm(nn.BatchNorm2d):
    """BatchNorm2d with in-place-ABN semantics: ``gamma = |weight| + eps``, optional leaky ReLU.

    ``activation`` is ``"none"`` or ``"leaky_relu"`` (slope 0.01). Checkpoints without
    ``num_batches_tracked`` load strictly (the buffer is filled in when missing).
    """

    def __init__(self, num_features: int, activation: str = "none", eps: float = ABN_EPS) -> None:
        if activation not in ("none", "leaky_relu"):
            raise ValueError(f"activation must be 'none' or 'leaky_relu', got {activation!r}")
        super().__init__(num_features, eps=eps)
        self.activation = activation

    @property
    def has_activation(self) -> bool:
        return self.activation == "leaky_relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.weight.abs() + self.eps
        use_batch_stats = self.training and self.track_running_stats
        if use_batch_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            gamma,
            self.bias,
            use_batch_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        if self.has_activation:
            y = F.leaky_relu(y, LEAKY_SLOPE)
        return y

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # BatchNorm2d only tolerates a missing num_batches_tracked for old-version metadata; SCHP's
        # checkpoints never have it, whatever metadata the file carries.
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"
