"""A training that learned nothing (issue #28): the verdict's rules, and the train stage that fails on
it in one line, tags its MLflow run and leaves the previous model byte-identical."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import tiny_arrays
from stage_runner import run_stage

from fashion_cnn.data import splits as data
from fashion_cnn.training import verdict
from fashion_cnn.training.config import ProjectConfig


def rows(*epochs: tuple[float, float]) -> list[dict[str, float]]:
    """History rows of (training loss, validation accuracy) per epoch."""
    return [
        {"epoch": number, "loss": loss, "val_loss": loss, "accuracy": 0.5, "val_accuracy": accuracy}
        for number, (loss, accuracy) in enumerate(epochs, start=1)
    ]


def test_chance_accuracy_on_enough_images_is_learning_nothing() -> None:
    reason = verdict.learned_nothing(rows((2.3, 0.11), (2.2, 0.12)), validation_images=500)
    assert "validation accuracy 0.120 after 2 epoch(s) is chance" in reason
    assert "up to 0.140 on 500 images" in reason
    # Just above the limit for 500 images is learning; the limit shrinks with more images.
    assert verdict.learned_nothing(rows((2.3, 0.11), (2.2, 0.141)), validation_images=500) == ""
    assert verdict.chance_limit(100) == pytest.approx(0.19)
    assert verdict.chance_limit(5000) < 0.115


def test_on_too_few_validation_images_accuracy_is_not_judged() -> None:
    assert verdict.learned_nothing(rows((2.3, 0.1), (2.2, 0.0)), validation_images=20) == ""


def test_a_loss_that_never_fell_below_its_first_epochs_is_learning_nothing() -> None:
    reason = verdict.learned_nothing(rows((14.2, 0.5), (14.5, 0.5), (14.5, 0.5)), validation_images=20)
    assert reason == "the training loss never fell below its first epoch's 14.2 (last 14.5)"
    # One epoch below the first is enough, even if the last is above it (a one-cycle warm-up).
    assert verdict.learned_nothing(rows((2.3, 0.5), (2.1, 0.6), (2.4, 0.6)), validation_images=20) == ""
    # One epoch has nothing to compare with.
    assert verdict.learned_nothing(rows((2.3, 0.5)), validation_images=20) == ""


def test_the_refusal_says_what_was_kept(tmp_path: Path) -> None:
    model_file = tmp_path / "model.keras"
    assert "no " + str(model_file) + " was written" in verdict.refusal("why", model_file)
    model_file.write_bytes(b"the previous model")
    line = verdict.refusal("why", model_file)
    assert line.startswith("training learned nothing: why; the model was not saved")
    assert f"{model_file} is still the previous run's" in line and "train.learning_rate" in line


# What train writes: none of it may change when a training learned nothing.
OUTPUTS = ("data/model", "reports/train")


def digests(project: Path) -> dict[str, tuple[int, str]]:
    return {
        str(path.relative_to(project)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for folder in OUTPUTS
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
@pytest.mark.reliability(
    case="a training that learned nothing (sgd at learning rate 1e-7, 2 epochs)",
    sees="one line: 'training learned nothing', why; run tagged; previous model kept; exit 1",
)
def test_a_training_that_learned_nothing_fails_and_keeps_the_previous_model(
    project: Path, tmp_path: Path
) -> None:
    """On the tests' tiny real data (200 validation images), run as `python -m`. The issue's
    learning rate of 1,000,000 makes this small data's loss NaN (the divergence guard's case); one far
    too low leaves the model where it started, at chance, with finite numbers."""
    config = ProjectConfig.from_params(yaml.safe_load((project / "params.yaml").read_text()))
    splits, mean, std = data.split_and_standardize(
        *tiny_arrays(test_count=100), config.data.model_copy(update={"validation_size": 200})
    )
    data.save_prepared(project / "data/prepared", splits, mean, std)
    # The previous run's outputs: any bytes do, train never reads them.
    for name in ("data/model/model.keras", "data/model/mlflow_run.json", "reports/train/metrics.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"the previous run's {name}")
    before = digests(project)
    result = run_stage(
        "train",
        "model=small_cnn",
        "data.validation_size=200",
        "train.epochs=2",
        "train.optimizer=sgd",
        "train.learning_rate=0.0000001",
        "train.checkpoint=false",
        cwd=project,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training learned nothing: "), result.stderr[-3000:]
    assert "is chance" in last and "the model was not saved" in last, last
    assert f"{project / 'data/model/model.keras'} is still the previous run's" in last, last
    assert digests(project) == before
    # This test's own store: an earlier in-process test may have set MLflow's global tracking URI.
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-cnn").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["learned_nothing"] == "true"
    assert run.data.tags["learned_nothing.reason"] in last
