"""Run one function per planned video, in joblib worker processes or in this one."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence


def each_video(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """``fn(*args)`` for every ``args`` of ``calls``, results in order; in ``workers`` processes when there
    is more than one of each (small batches keep the progress bar moving), else in this process."""
    if workers > 1 and len(calls) > 1:
        from joblib import Parallel, delayed

        return iter(Parallel(n_jobs=workers, return_as="generator", batch_size=4)(
            delayed(fn)(*args) for args in calls))
    return (fn(*args) for args in calls)
