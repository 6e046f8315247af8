"""The template project every damaged-file case copies (tests/test_damaged_files.py), made by the
project's own writers: synthetic raw and prepared data, a small_cnn model with its config.yaml, MLflow
run and what evaluate computed with it, history.csv, the checkpoint of a training run interrupted
after epoch 1, a garment photo; and beside it another run's counterparts of those files.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_project, make_synthetic_raw
from PIL import Image

from fashion_cnn.config import schema
from fashion_cnn.stages import prepare
from fashion_cnn.tracking import record, runs
from fashion_cnn.training import checkpoint, history
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths


@dataclass(frozen=True)
class Template:
    """A project whose every input exists and is valid, and the files of another run beside it."""

    project: Path
    store: Path  # the MLflow SQLite store of every case
    other_run: Path  # the counterparts of the project's files made by another run (not in the project)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.store}"


# small_cnn for 2 epochs of 20-image batches on 100 synthetic training images: the checkpoint is that
# run's, interrupted after epoch 1.
TEMPLATE_OVERRIDES = {"validation_size": 20, "epochs": 2, "batch_size": 20}


def template_params(project: Path) -> ProjectConfig:
    """Shrink the copy's params.yaml to the template's run (train's fingerprint is taken from it)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"] = yaml.safe_load((project / "conf" / "model" / "small_cnn.yaml").read_text())
    params["data"]["validation_size"] = TEMPLATE_OVERRIDES["validation_size"]
    params["train"].update(epochs=TEMPLATE_OVERRIDES["epochs"], batch_size=TEMPLATE_OVERRIDES["batch_size"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ProjectConfig.from_params(params)


def interrupted_training(run_config: ProjectConfig, prepared_dir: Path, checkpoint_dir: Path) -> None:
    """Train with train.checkpoint on and stop right after epoch 1 is saved, as Ctrl-C would."""
    import mlflow

    from fashion_cnn.data import splits as data
    from fashion_cnn.training import loop, runtime

    original = checkpoint.ResumableTraining.on_epoch_end

    def save_then_stop(callback, epoch: int, logs: dict | None = None) -> None:
        original(callback, epoch, logs)
        raise KeyboardInterrupt

    settings = runtime.resolve_runtime(run_config.train, "CPU", None)
    runtime.seed_everything(run_config.seed, run_config.train.deterministic)
    splits = [data.load_split(prepared_dir, name) for name in ("train", "validation")]
    with (
        pytest.MonkeyPatch.context() as patch,
        mlflow.start_run(),
        contextlib.redirect_stdout(io.StringIO()),
        pytest.raises(KeyboardInterrupt),
    ):
        patch.setattr(checkpoint.ResumableTraining, "on_epoch_end", save_then_stop)
        loop.fit(run_config, *splits, settings, None, checkpoint_dir=checkpoint_dir)


def logged_run(project_paths: paths.ProjectPaths, run_config: ProjectConfig) -> dict[str, str]:
    """A finished MLflow run in the template's experiment with the config logged as train logs it."""
    import mlflow

    experiment_id = runs.use_experiment(project_paths, run_config.tracking.experiment_name)
    with mlflow.start_run(experiment_id=experiment_id, run_name="train") as run:
        record.log_config(run_config)
    return {
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "tracking_uri": mlflow.get_tracking_uri(),
    }


def write_model_outputs(model_file: Path, project_paths: paths.ProjectPaths, destination: Path) -> None:
    """What evaluate writes for model_figures, computed with the model in `model_file` on the test split."""
    import keras

    from fashion_cnn.data import splits as data
    from fashion_cnn.evaluation import model_outputs, scores
    from fashion_cnn.utils import records

    model = keras.saving.load_model(model_file, compile=False, safe_mode=True)
    test = data.load_pixels(project_paths.prepared_dir, "test")  # what evaluate feeds the model
    probabilities = scores.score(model, test)["probabilities"]
    model_outputs.write(
        destination, model_outputs.compute(model, test, probabilities, records.sha256(model_file))
    )


def make_template(base: Path) -> Template:
    """The template project and another run's files, made by the project's own writers."""
    import keras

    from fashion_cnn.data.splits import load_standardization
    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.model.standardization import with_standardization

    project = copy_project(base / "template")
    template = Template(project, base / "mlflow.db", base / "other-run")
    template.other_run.mkdir()
    project_paths = paths.ProjectPaths(project)
    run_config = template_params(project)
    make_synthetic_raw(project_paths.raw_dir)
    prepare.prepare(project_paths.raw_dir, project_paths.prepared_dir, run_config.data)
    interrupted_training(run_config, project_paths.prepared_dir, project_paths.train_checkpoint_dir)
    keras.utils.set_random_seed(0)
    project_paths.model_dir.mkdir(parents=True)
    statistics = load_standardization(project_paths.prepared_dir)
    with_standardization(build_model(run_config.model), *statistics).save(project_paths.model_file)
    schema.save_resolved(run_config, project_paths.model_dir / "config.yaml")
    project_paths.run_info_file.write_text(json.dumps(logged_run(project_paths, run_config)))
    write_model_outputs(project_paths.model_file, project_paths, project_paths.model_outputs_file)
    rows = [
        {"epoch": epoch, "objective": 0.9, "loss": 0.9 / epoch, "accuracy": 0.5, "val_loss": 1.0,
         "val_accuracy": 0.45, "epoch_seconds": 1.5}
        for epoch in (1, 2)
    ]  # fmt: skip
    history.write_history(project_paths.history_file, rows)  # creates reports/train
    project_paths.train_metrics_file.write_text(
        json.dumps({"val_loss": 1.0, "val_accuracy": 0.45, "train_seconds": 3.0, "seconds_per_epoch": 1.5})
    )
    garment = np.zeros((64, 48, 3), np.uint8)  # a light coat on black, 48 wide and 64 high
    garment[8:56, 10:38] = (200, 190, 180)
    Image.fromarray(garment).save(project / "garment.png")
    # Another run's files: a lenet5 model, its config and MLflow run; a model for other images;
    # the weights of another small_cnn initialization.
    lenet5 = yaml.safe_load((project / "conf" / "model" / "lenet5.yaml").read_text())
    other_config = ProjectConfig.from_params({**run_config.model_dump(mode="json"), "model": lenet5})
    with_standardization(build_model(other_config.model), *statistics).save(
        template.other_run / "model.keras"
    )
    schema.save_resolved(other_config, template.other_run / "config.yaml")
    (template.other_run / "mlflow_run.json").write_text(json.dumps(logged_run(project_paths, other_config)))
    write_model_outputs(
        template.other_run / "model.keras", project_paths, template.other_run / "model_outputs.npz"
    )
    wrong_shape = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(5)], name="other_images"
    )
    wrong_shape.save(template.other_run / "wrong_shape.keras")
    keras.utils.set_random_seed(1)
    build_model(run_config.model).save_weights(template.other_run / "latest.weights.h5")
    return template
