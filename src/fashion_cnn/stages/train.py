"""Stage train: train the CNN described in params.yaml, on a GPU when there is one, tracked in MLflow.

Read top to bottom: the machine and the data are set up and checked once (a refused run touches nothing),
then, under the training lock and in the stage's MLflow run, the model is trained, put behind
the training split's standardization (model/standardization.py: the saved model takes raw grey levels),
its outputs saved (training/outputs.py) and logged, and the checkpoint discarded. Under a multi-worker
strategy every worker runs this stage; the others train in step with the chief and write nothing
(training/distribute.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fashion_cnn.config.cli import hydra_overrides, stage_main
from fashion_cnn.data.splits import Split, load_pixels, load_split, load_standardization
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.model.architecture import count_parameters
from fashion_cnn.model.standardization import with_standardization
from fashion_cnn.tracking import record, runs
from fashion_cnn.training import checkpoint, distribute, loop, memory_check, outputs, recipe, runtime, verdict
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What training runs on and with, set up and checked once before any run or output is started."""

    settings: runtime.Runtime
    strategy: tf.distribute.Strategy | None
    train_split: Split
    validation_split: Split
    standardization: tuple  # the training split's per-pixel mean and std, each (1, 28, 28)
    examples: np.ndarray  # the MLflow input example: the first validation images as grey levels


def set_up(config: ProjectConfig, project: paths.ProjectPaths) -> Setup:
    """The device (a GPU asked for but absent is an error), a model and batch that would not fit in
    memory, the strategy and settings, the data and the statistics the saved model carries (read
    once), a steps_per_execution that does not divide an epoch, and a checkpoint folder that cannot
    be written."""
    device = runtime.select_device(config.train.device, config.train.inter_op_threads)
    if warning := memory_check.check_memory(config):
        log.warning("%s", warning)
    # First TensorFlow work after choosing devices: multi-worker collectives are set up at start-up.
    strategy = distribute.make_strategy(config.train.strategy, device)
    settings = runtime.resolve_runtime(config.train, device, strategy)
    train_split = load_split(project.prepared_dir, "train")
    validation_split = load_split(project.prepared_dir, "validation")
    standardization = load_standardization(project.prepared_dir)
    examples = load_pixels(project.prepared_dir, "validation").images[:2]  # (2, 28, 28, 1), 0..255
    steps = recipe.steps_per_epoch(len(train_split.labels), settings.global_batch_size)
    recipe.check_steps_per_execution(steps, config.train.steps_per_execution)
    # Resuming covers single-process training only (train); its folder is checked before any epoch.
    if config.train.checkpoint and strategy is None:
        checkpoint.check_writable(project.train_checkpoint_dir)
    return Setup(settings, strategy, train_split, validation_split, standardization, examples)


def train(
    config: ProjectConfig, project: paths.ProjectPaths, setup: Setup, task: distribute.Task
) -> tuple[keras.Model, list[dict[str, float]], dict[str, float]]:
    """Train on the prepared splits; the model, its per-epoch rows and reports/train/metrics.json's values.

    The chief logs the run's setup and each epoch to the active MLflow run.
    """
    settings, train_split, validation_split = setup.settings, setup.train_split, setup.validation_split
    runtime.seed_everything(config.seed, config.train.deterministic)
    runtime.apply_precision(settings)
    print(
        f"training {config.model.name} ({count_parameters(config.model):,} parameters): "
        f"{len(train_split.labels):,} train / {len(validation_split.labels):,} validation images, "
        f"{settings.replicas} replica(s), global batch {settings.global_batch_size}",
        flush=True,
    )
    if task.is_chief:
        loop.log_run_setup(config, settings, task, train_split)
    started = time.perf_counter()
    # Resuming covers single-process training; distributed runs start over after an interruption.
    checkpoint_dir = project.train_checkpoint_dir if setup.strategy is None else None
    model, rows = loop.fit(
        config,
        train_split,
        validation_split,
        settings,
        setup.strategy,
        chief=task.is_chief,
        checkpoint_dir=checkpoint_dir,
    )
    # A model that learned nothing is not saved (every worker stops): the previous one stays.
    if reason := verdict.learned_nothing(rows, len(validation_split.labels)):
        if task.is_chief:
            record.tags({"learned_nothing": "true", "learned_nothing.reason": reason})
        raise FashionCnnError(verdict.refusal(reason, project.model_file))
    return model, rows, loop.summarize(rows, time.perf_counter() - started)


def run_name(config: ProjectConfig, overrides: list[str]) -> str:
    """The preset name plus what the command line changed, e.g. 'seed_cnn train.optimizer=adam'."""
    changed = [item for item in overrides if not item.startswith("model=")]
    return " ".join([config.model.name, *changed])[:200]


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.train` (on every worker under multi_worker)."""
    # TF_CONFIG is checked before any work; it decides who writes and logs.
    task = distribute.current_task(config.train.strategy)
    distribute.announce(task)
    # Params errors first: a refused run touches nothing, not even the lock file.
    setup = set_up(config, project)
    if not task.is_chief:
        distribute.train_as_worker(setup.strategy, lambda: train(config, project, setup, task)[0])
        return
    overrides = hydra_overrides()
    name = run_name(config, overrides)
    with (
        checkpoint.training_lock(project.train_lock_file),
        runs.stage_run(project, config, "train", name, config.tracking.experiment_name, overrides) as run,
    ):
        layers_model, rows, metrics = train(config, project, setup, task)
        model = with_standardization(layers_model, *setup.standardization)
        summary = outputs.save(config, project, model, rows, metrics, run)
        loggable = distribute.plain_model(model, setup.strategy, project.model_file)
        outputs.log(project, summary, metrics, loggable, setup.examples)
        distribute.wait_for_all_workers(setup.strategy)
        # Only now, with every output written, is the checkpoint no longer needed to resume.
        checkpoint.discard(project.train_checkpoint_dir)


if __name__ == "__main__":
    distribute.keep_worker_hydra_files_out()
    main()
