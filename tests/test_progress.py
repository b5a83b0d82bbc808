"""Progress bars (pipeline/core/progress.py): rate and ETA from the work counted, evaluations excluded."""
from __future__ import annotations

import io

import pytest

import pipeline.core.progress as progress
from pipeline.core.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", c)
    return c


def test_rate_and_eta(clock: Clock) -> None:
    bar = Progress(20, "pretrain", "step", stream=io.StringIO())
    clock.now += 10
    bar.update(10)
    assert bar.rate == pytest.approx(1.0)
    assert "10/20 [00:10<00:10, 1.00 step/s]" in bar.line()


def test_excluded_time_counts_in_neither_rate_nor_eta(clock: Clock) -> None:
    bar = Progress(20, "pretrain", "step", stream=io.StringIO())
    clock.now += 10
    bar.update(10)
    clock.now += 30  # a 30 s evaluation between steps
    bar.exclude(30)
    assert bar.elapsed == pytest.approx(10.0)
    assert "10/20 [00:10<00:10, 1.00 step/s]" in bar.line()
    clock.now += 10
    bar.update(10)
    assert bar.rate == pytest.approx(1.0)
