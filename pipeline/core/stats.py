"""Small-sample statistics shared by the summaries, the figures and the benches: the 95 % Student-t
interval of a mean (of seeds, of held-out views, of paired differences)."""
from __future__ import annotations

import math
import statistics
from typing import Sequence

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


__all__ = ["T975", "t975", "t_interval"]
