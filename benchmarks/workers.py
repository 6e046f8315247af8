"""The measured processes: one training run per process, its steps timed from inside Keras.

benchmarks.train_throughput starts `python -m benchmarks.workers KIND ...` once per run, so imports,
thread pools and TensorFlow's caches never carry over from one run to the next. Kinds:

- `seed`: the seed notebook's code as written (`import tensorflow.keras`, a `Sequential` model,
  `model.fit` on NumPy arrays, nadam, Keras's default batch of 32); it imports nothing of this project.
- `project`: the train stage's code path, `fashion_cnn.train.fit` with the config composed from
  params.yaml plus the variant's overrides (device, precision, seeding and data loading as `train` does).
- `stage`: the whole train stage entry point (`python -m fashion_cnn.train`: Hydra, MLflow, saving),
  stopped after the timed steps, for the time to the first step and the peak memory.

Every kind records the wall clock at the start of each step (Keras's `on_train_batch_begin`): the
timed window runs from the first step after the warm-up to the step after the last timed one, so it
holds exactly the timed steps and none of the tracing, compilation or validation.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

# The parent sets this just before starting the process, so the clock includes interpreter start-up.
SPAWNED_AT_ENV_VAR = "FASHION_CNN_BENCH_SPAWNED_AT"
SPAWNED_AT = float(os.environ.get(SPAWNED_AT_ENV_VAR, time.time()))
# The seed calls model.fit without batch_size: Keras's default.
SEED_BATCH_SIZE = 32


class BenchmarkDone(Exception):
    """Raised from a callback once the timed steps are done: ends fit before another step runs."""


class StepTimes:
    """Wall-clock time at the start of each step Keras runs, and the timed window in it."""

    def __init__(self, warmup_steps: int, timed_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.timed_steps = timed_steps
        self.first_step_started: float | None = None
        # The first call into the train function returns (tracing and the first step(s) done).
        self.first_step_done: float | None = None
        self.window_start: tuple[int, float] | None = None
        self.window_end: tuple[int, float] | None = None

    def step_begins(self, step: int) -> bool:
        """Record the start of `step` (0-based); True once the timed steps are complete."""
        now = time.time()
        if self.first_step_started is None:
            self.first_step_started = now
        elif self.first_step_done is None:
            self.first_step_done = now
        if self.window_start is None and step >= self.warmup_steps:
            self.window_start = (step, now)
        if self.window_start is not None and step >= self.window_start[0] + self.timed_steps:
            self.window_end = (step, now)
            return True
        return False

    def summary(self, batch_size: int) -> dict[str, Any]:
        """Images per second over the timed window, and the start-up times (seconds since spawn)."""
        if self.window_start is None or self.window_end is None:
            raise RuntimeError(
                "the timed window never closed: the training split has too few images for the "
                f"{self.warmup_steps} warm-up and {self.timed_steps} timed steps"
            )
        steps = self.window_end[0] - self.window_start[0]
        seconds = self.window_end[1] - self.window_start[1]
        return {
            "batch_size": batch_size,
            "timed_steps": steps,
            "timed_seconds": seconds,
            "seconds_per_step": seconds / steps,
            "images_per_second": steps * batch_size / seconds,
            "seconds_to_first_step_start": self.first_step_started - SPAWNED_AT,
            "seconds_to_first_step_done": self.first_step_done - SPAWNED_AT,
        }


def clocked(callback_class: type, times: StepTimes, stop: str) -> type:
    """A subclass of a Keras callback class that feeds `times`; at the end it raises or stops training.

    Only `on_train_batch_begin` is added: overriding `on_train_batch_end` would switch Keras from
    asynchronous to synchronous callback dispatch and change what is measured.
    """

    class Clocked(callback_class):
        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            super().on_train_batch_begin(batch, logs)
            if times.step_begins(batch):
                if stop == "raise":
                    raise BenchmarkDone
                self.model.stop_training = True

    Clocked.__name__ = f"Clocked{callback_class.__name__}"
    return Clocked


def run_seed(arguments: argparse.Namespace) -> dict[str, Any]:
    """The seed notebook's model and training call, on the prepared arrays."""
    import numpy as np
    import tensorflow as tf
    import tensorflow.keras as keras  # The seed's import (Keras 3 under TensorFlow 2.16+).

    imported = time.time()
    prepared = Path(arguments.prepared)
    with np.load(prepared / "train.npz") as archive:
        X_train, y_train = archive["images"], archive["labels"]  # noqa: N806 - the seed's names.
    with np.load(prepared / "validation.npz") as archive:
        X_valid, y_valid = archive["images"], archive["labels"]  # noqa: N806
    loaded = time.time()

    np.random.seed(42)
    tf.random.set_seed(42)
    DefaultConv2D = functools.partial(  # noqa: N806 - the seed's name.
        keras.layers.Conv2D, kernel_size=3, activation="relu", padding="SAME"
    )
    model = keras.models.Sequential(
        [
            DefaultConv2D(filters=64, kernel_size=7, input_shape=[28, 28, 1]),
            keras.layers.MaxPooling2D(pool_size=2),
            DefaultConv2D(filters=128),
            DefaultConv2D(filters=128),
            keras.layers.MaxPooling2D(pool_size=2),
            DefaultConv2D(filters=256),
            DefaultConv2D(filters=256),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Flatten(),
            keras.layers.Dense(units=128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(units=64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(units=10, activation="softmax"),
        ]
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer="nadam", metrics=["accuracy"])
    times = StepTimes(arguments.warmup, arguments.steps)
    clock = clocked(keras.callbacks.Callback, times, "raise")()
    with contextlib.suppress(BenchmarkDone):
        model.fit(X_train, y_train, epochs=10, validation_data=(X_valid, y_valid), callbacks=[clock])
    result = times.summary(SEED_BATCH_SIZE)
    result.update(
        {
            "parameters": int(model.count_params()),
            "seconds_imports": imported - SPAWNED_AT,
            "seconds_data_loading": loaded - imported,
        }
    )
    return result


def compose_config(root: Path, overrides: list[str]) -> Any:
    """params.yaml of `root` plus overrides, validated: what the train stage runs with.

    Composes exactly as the stages' Hydra entry point and the tests' make_config fixture do.
    """
    from hydra import compose, initialize

    from fashion_cnn import config, stage

    stage.register_stage_config(root)
    with initialize(version_base="1.3", config_path=None):
        composed = compose(stage.STAGE_CONFIG_NAME, overrides=overrides)
    return config.validate(config.to_plain_dict(composed))


def run_project(arguments: argparse.Namespace) -> dict[str, Any]:
    """The train stage's own steps before and during fit, without MLflow and saving."""
    # Imported here, not at the top: the seed's process must not load this project's modules.
    from fashion_cnn import data, distribute, memory, model, runtime, train

    imported = time.time()
    project_config = compose_config(Path(arguments.root), arguments.override)
    device = runtime.select_device(project_config.train.device, project_config.train.inter_op_threads)
    strategy = distribute.make_strategy(project_config.train.strategy, device)
    settings = runtime.resolve_runtime(project_config.train, device, strategy)
    runtime.seed_everything(project_config.seed, project_config.train.deterministic)
    memory.memory_warning(project_config)
    train_split = data.load_split(Path(arguments.prepared), "train")
    validation_split = data.load_split(Path(arguments.prepared), "validation")
    loaded = time.time()

    times = StepTimes(arguments.warmup, arguments.steps)
    # fit() builds its callback from the module's EpochReport: swap in the clocked subclass.
    train.EpochReport = clocked(train.EpochReport, times, "raise")
    with contextlib.suppress(BenchmarkDone):
        train.fit(project_config, train_split, validation_split, settings, strategy)
    result = times.summary(project_config.train.batch_size)
    result.update(
        {
            "parameters": model.count_parameters(project_config.model),
            "seconds_imports": imported - SPAWNED_AT,
            "seconds_data_loading": loaded - imported,
            "runtime": settings.as_dict(),
        }
    )
    return result


def run_stage(arguments: argparse.Namespace) -> dict[str, Any]:
    """`python -m fashion_cnn.train` with the project root from $FASHION_CNN_ROOT, stopped after the steps."""
    from fashion_cnn import train

    imported = time.time()
    times = StepTimes(arguments.warmup, arguments.steps)
    # stop_training, not an exception: the stage then validates, saves and logs as it always does.
    train.EpochReport = clocked(train.EpochReport, times, "stop")
    loading_seconds = []
    original_load_split = train.load_split

    def timed_load_split(prepared_dir: Path, name: str) -> Any:
        started = time.time()
        split = original_load_split(prepared_dir, name)
        loading_seconds.append(time.time() - started)
        return split

    train.load_split = timed_load_split
    sys.argv = ["fashion_cnn.train", *arguments.override]
    try:
        train.main()
    except SystemExit as exit_request:
        if exit_request.code not in (0, None):
            raise
    result = times.summary(arguments.batch_size)
    result.update(
        {
            "seconds_imports": imported - SPAWNED_AT,
            "seconds_data_loading": sum(loading_seconds),
            "seconds_total": time.time() - SPAWNED_AT,
        }
    )
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write the run's result as JSON through a temp file, so the parent never reads half of it."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    temp_path = path.with_name(path.name + ".tmp")
    temp_path.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temp_path, path)


RUNNERS = {"seed": run_seed, "project": run_project, "stage": run_stage}


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m benchmarks.workers KIND`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RUNNERS))
    parser.add_argument("--result", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--warmup", required=True, type=int, help="untimed steps first (compilation)")
    parser.add_argument("--steps", required=True, type=int, help="timed steps")
    parser.add_argument("--prepared", help="folder of train.npz and validation.npz (seed, project)")
    parser.add_argument("--root", help="project root whose params.yaml and conf/ are composed (project)")
    parser.add_argument("--override", action="append", default=[], help="Hydra override (project, stage)")
    parser.add_argument("--batch-size", type=int, default=SEED_BATCH_SIZE, help="the stage's batch (stage)")
    arguments = parser.parse_args(argv)
    write_result(arguments.result, RUNNERS[arguments.kind](arguments))


if __name__ == "__main__":
    main()
