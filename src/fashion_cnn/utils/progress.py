"""Signs of life during long work (an epoch, a download): in a terminal a live bar, Keras's own
Progbar; elsewhere (DVC's log, CI, a file) one plain line at most every FASHION_CNN_PROGRESS_SECONDS
(default 30) with how far it got, the rate and the time left.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

INTERVAL_ENV_VAR = "FASHION_CNN_PROGRESS_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30.0


def interval_seconds() -> float:
    """Seconds between two plain progress lines ($FASHION_CNN_PROGRESS_SECONDS, default 30)."""
    try:
        return max(float(os.environ.get(INTERVAL_ENV_VAR, DEFAULT_INTERVAL_SECONDS)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL_SECONDS


def duration(seconds: float) -> str:
    """12 -> '12s', 245 -> '4m05s', 3725 -> '1h02m'."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rate_text(rate: float) -> str:
    """352.4 -> '352', 12.34 -> '12.3', 0.5 -> '0.5'."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


class Progress:
    """Progress towards `total` units of one task; `update(done)` draws or prints as the output allows."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        rate_unit: str,
        rate_per_unit: float = 1.0,
        stream: TextIO | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        # The rate is shown in rate_unit per second: units done x rate_per_unit (images per step).
        self.rate_unit, self.rate_per_unit = rate_unit, rate_per_unit
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.interval = interval_seconds()
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if self.terminal:
            import keras

            self.bar = keras.utils.Progbar(total, unit_name=unit, stateful_metrics=[rate_unit])

    def rate(self, done: int) -> float:
        """Units of rate_unit per second so far."""
        return done * self.rate_per_unit / max(time.perf_counter() - self.started, 1e-9)

    def seconds_for(self, done: int, units: int) -> float:
        """Time `units` more units take at the pace of the first `done`."""
        return (time.perf_counter() - self.started) / done * units if done else float("inf")

    def seconds_left(self, done: int) -> float:
        """Time to finish this task at the pace so far."""
        return self.seconds_for(done, self.total - done)

    def update(self, done: int, extra: str = "") -> None:
        """Report `done` units of `total`; `extra` is appended to a plain line (e.g. the run's ETA)."""
        if self.bar is not None:
            self.bar.update(done, values=[(self.rate_unit, self.rate(done))])
            return
        now = time.perf_counter()
        if now - self.last_line < self.interval or done >= self.total:
            return
        self.last_line = now
        percent = 100 * done / self.total if self.total else 100.0
        line = (
            f"{self.label}: {self.unit} {done:,}/{self.total:,} ({percent:.0f}%), "
            f"{rate_text(self.rate(done))} {self.rate_unit}/s, ETA {duration(self.seconds_left(done))}"
        )
        print(line + (f", {extra}" if extra else ""), file=self.stream, flush=True)
