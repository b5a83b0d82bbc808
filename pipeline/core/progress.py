"""Progress bars with rate and ETA, and JSONL metric logs.

Bars draw only on an interactive terminal and on rank 0; elsewhere they log a line every
``log_every_s`` seconds, so batch jobs still show rate and ETA in their logs without filling
them with carriage returns.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A minimal tqdm-like counter: ``with Progress(total, "teacher-cache", "clip") as bar: bar.update(n)``."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool = True,
                 stream: TextIO | None = None, log_every_s: float = 30.0) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.log_every_s = log_every_s
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_log = self.start

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of work that is not this bar's (an evaluation between training steps) out of
        the elapsed time, the rate and the ETA."""
        self.start += seconds

    @property
    def rate(self) -> float:
        el = self.elapsed
        return self.n / el if el > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            width = 24
            filled = int(width * min(self.n, self.total) / self.total)
            bar = "#" * filled + "-" * (width - filled)
            text = (f"{self.desc}: {pct:5.1f}% |{bar}| {self.n}/{self.total} "
                    f"[{_fmt_time(self.elapsed)}<{_fmt_time(eta)}, {rate:.2f} {self.unit}/s]")
        else:
            text = f"{self.desc}: {self.n} {self.unit} [{_fmt_time(self.elapsed)}, {rate:.2f} {self.unit}/s]"
        return f"{text} {self.postfix}".rstrip()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.interactive:
            if now - self._last_draw > 0.1 or (self.total and self.n >= self.total):
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
        elif now - self._last_log >= self.log_every_s:
            log.info(self.line())
            self._last_log = now

    def close(self) -> None:
        if not self.enabled:
            return
        if self.interactive:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
        else:
            log.info(self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MetricsLog:
    """Append-only JSONL metrics (one object per line, flushed), easy to plot with pandas.

    With the ``tensorboard`` extra installed, every record is mirrored as TensorBoard scalars into
    ``<folder of path>/tensorboard`` (pipeline/core/tensorboard_log.py); ``tensorboard=False`` opts out.
    """

    def __init__(self, path: Path | str, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh: TextIO | None = None
        self._tb: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                from pipeline.core.tensorboard_log import SUBDIR, open_writer

                self._tb = open_writer(self.path.parent / SUBDIR)

    def write(self, **record: Any) -> None:
        if self._fh is None:
            return
        record.setdefault("time", time.time())
        self._fh.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._tb.record(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
