"""The reproduction check passes on the committed quick profile and fails on missing, bad or other numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tools import reproduce

ROOT = Path(__file__).resolve().parents[1]


def write_metrics(path: Path, payload: object) -> Path:
    """A metrics file with the given JSON payload."""
    path.write_text(json.dumps(payload))
    return path


def test_the_quick_profile_has_a_committed_accuracy():
    assert 0.0 < reproduce.read_accuracy(ROOT / reproduce.BASELINES["quick"]) <= 1.0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "malformed metrics"),
        ({"validation": {"accuracy": 0.9}}, "malformed metrics"),
        ({"test": {"accuracy": "high"}}, "not a number"),
        ({"test": {"accuracy": 1.5}}, "not a number in"),
    ],
)
def test_malformed_metrics_are_refused_naming_the_file(tmp_path, payload, message):
    path = tmp_path / "metrics.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(FashionCnnError, match=message) as raised:
        reproduce.read_accuracy(path)
    assert str(path) in str(raised.value)


def test_missing_metrics_are_refused(tmp_path):
    with pytest.raises(FashionCnnError, match="missing"):
        reproduce.read_accuracy(tmp_path / "metrics.json")


def test_compare_passes_within_and_fails_outside_the_tolerance():
    assert reproduce.compare(0.9049, 0.9049, 0.005).endswith(": reproduced")
    assert reproduce.compare(0.9049, 0.9090, 0.005).endswith(": reproduced")
    with pytest.raises(FashionCnnError, match="NOT reproduced"):
        reproduce.compare(0.9049, 0.8990, 0.005)


def test_cli_fails_before_any_work_when_the_reported_metrics_are_missing(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (project / name).write_text((ROOT / name).read_text())
    result = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.tools.reproduce", "--profile", "quick"],
        cwd=project, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "reports/quick/metrics.json: missing" in result.stderr
    assert "dvc repro" not in result.stdout


@pytest.mark.slow
def test_quick_profile_reproduces_its_committed_accuracy():
    """The end-to-end check: real `dvc repro` of every stage in a clean copy, quick preset."""
    result = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.tools.reproduce", "--profile", "quick", "--tolerance", "0.01"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    assert "test.accuracy" in result.stdout  # the printed `dvc metrics diff`
    assert ": reproduced" in result.stdout


def test_the_recipe_profile_is_the_race_winner_of_conf_race_yaml():
    from fashion_cnn.reproduction import race_report

    winner = race_report.load_race_config(ROOT).winner
    assert reproduce.profile_overrides(ROOT, "recipe") == [f"experiment={winner}"]
    assert reproduce.profile_overrides(ROOT, "quick") == ["experiment=quick"]
    assert reproduce.profile_overrides(ROOT, "default") == []
