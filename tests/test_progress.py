"""Progress lines during long work: plain lines at most every interval, with rate and time left."""

from __future__ import annotations

import io

import pytest

from fashion_cnn.utils import progress


@pytest.mark.parametrize(("seconds", "text"), [(12.4, "12s"), (245, "4m05s"), (3725, "1h02m")])
def test_durations_read_like_a_clock(seconds: float, text: str) -> None:
    assert progress.duration(seconds) == text


def test_plain_lines_name_the_step_the_rate_and_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV_VAR, "0")
    stream = io.StringIO()
    shown = progress.Progress(
        "epoch 2/5", 200, "step", "images", rate_per_unit=32, stream=stream, terminal=False
    )
    shown.update(50, "run ETA 3m00s")
    shown.update(200)  # the end is the epoch's own line, not a progress line
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("epoch 2/5: step 50/200 (25%), ")
    assert " images/s, ETA " in lines[0] and lines[0].endswith(", run ETA 3m00s")
    assert "\x1b[" not in stream.getvalue()


def test_plain_lines_come_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV_VAR, "3600")
    stream = io.StringIO()
    shown = progress.Progress(
        "download", 1000, "byte", "MB", rate_per_unit=1e-6, stream=stream, terminal=False
    )
    for done in range(1, 1000, 10):
        shown.update(done)
    assert stream.getvalue() == ""
