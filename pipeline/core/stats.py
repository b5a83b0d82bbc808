"""Small-sample statistics shared by the summaries, the figures and the benches: the 95 % Student-t
interval of a mean (of seeds, of held-out views, of paired differences), and how both are written."""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

# Student t quantile t_{0.975, df} for df = 1..30 (a 95 % two-sided interval); 1.96 beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def t_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % Student-t interval of the mean); None for fewer than 2 values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def mean_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean and its 95 % Student-t interval; None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean, half = t_interval(values)
    assert half is not None
    return mean, mean - half, mean + half


def format_estimate(figures: Mapping[str, Any] | None, key: str, missing: str = "-") -> str:
    """``0.857 ± 0.008``: ``figures[key]`` with its standard error ``figures[key + "_se"]`` when there is one
    (held-out figures measured over several views); ``missing`` when the figure is absent."""
    figures = figures or {}
    value, se = figures.get(key), figures.get(f"{key}_se")
    if not isinstance(value, (int, float)):
        return missing
    return f"{value:.3f}" + (f" ± {se:.3f}" if isinstance(se, (int, float)) else "")


def format_interval(estimate: Mapping[str, Any]) -> str:
    """``+0.330 [+0.273, +0.386]``: a signed difference and its 95 % interval, from {"mean", "low", "high"}."""
    return f"{estimate['mean']:+.3f} [{estimate['low']:+.3f}, {estimate['high']:+.3f}]"


__all__ = ["T975", "t975", "t_interval", "mean_interval", "format_estimate", "format_interval"]
