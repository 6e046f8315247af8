"""The measured processes, `python -m benchmarks.workers JOB RESULT`: one timed training run each.

JOB is JSON: the kind (`seed`: the notebook's code as written, importing nothing of this project; `project`:
`fashion_cnn.training.loop.fit` set up as the train stage does, without MLflow and saving; `stage`: the whole
`python -m fashion_cnn.stages.train`), warm-up and timed steps. The timed window runs from the start of the
first step after the warm-up to the start of the step after the timed ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The parent sets this just before starting the process, so the clock includes interpreter start-up.
SPAWNED_AT_ENV_VAR = "FASHION_CNN_BENCH_SPAWNED_AT"
SPAWNED_AT = float(os.environ.get(SPAWNED_AT_ENV_VAR, time.time()))
# The folder holding the `benchmarks` package: the worker imports it from there.
BENCHMARKS_PARENT = Path(__file__).resolve().parents[1]
# One run never needs this long; a hung one is killed and recorded as failed.
RUN_TIMEOUT = 900  # seconds
# The seed calls model.fit without batch_size: Keras's default.
SEED_BATCH_SIZE = 32


class BenchmarkDone(Exception):
    """Raised from a callback once the timed steps are done: ends fit before another step runs."""


class StepClock:
    """The wall clock at the start of every step, and the runtime the model ran with."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.warmup_steps, self.timed_steps = job["warmup"], job["steps"]
        self.starts: list[tuple[int, float]] = []  # (step, wall clock); steps_per_execution skips some
        self.opening_step: int | None = None  # the first step after the warm-up
        self.effective: dict[str, Any] | None = None

    def callback(self, base: type, stop: str) -> type:
        """A subclass of Keras callback class `base` that clocks each step, then raises or stops training.

        Only `on_train_batch_begin` is added: overriding `on_train_batch_end` would switch Keras from
        asynchronous to synchronous callback dispatch and change what is measured.
        """
        clock = self

        class Clocked(base):
            def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
                super().on_train_batch_begin(batch, logs)
                clock.starts.append((batch, time.time()))
                if clock.opening_step is None and batch >= clock.warmup_steps:
                    clock.opening_step = batch
                if clock.opening_step is not None and batch >= clock.opening_step + clock.timed_steps:
                    # The train stage's EpochReport read this back from the model in on_train_begin.
                    if getattr(self, "effective", None) is not None:
                        clock.effective = dataclasses.asdict(self.effective)
                    if stop == "raise":
                        raise BenchmarkDone
                    self.model.stop_training = True

        return Clocked

    def summary(self, batch_size: int, **extra: Any) -> dict[str, Any]:
        """Images per second over the timed window, seconds from spawn to the first step, what ran."""
        if self.opening_step is None or self.starts[-1][0] < self.opening_step + self.timed_steps:
            raise RuntimeError(f"the timed window never closed: too few images for {self.timed_steps} steps")
        opened = next(start for start in self.starts if start[0] == self.opening_step)
        steps, seconds = self.starts[-1][0] - opened[0], self.starts[-1][1] - opened[1]
        result = {"batch_size": batch_size, "timed_steps": steps, "timed_seconds": seconds}
        result |= {"images_per_second": steps * batch_size / seconds, "effective": self.effective}
        # The second step starts once the first call into the train function (tracing included) returned.
        result["seconds_to_first_step_start"] = self.starts[0][1] - SPAWNED_AT
        return result | {"seconds_to_first_step_done": self.starts[1][1] - SPAWNED_AT, **extra}


def run_seed(job: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    """The seed notebook's model and training call, on the prepared arrays."""
    import numpy as np
    import tensorflow as tf
    import tensorflow.keras as keras  # The seed's import (Keras 3 under TensorFlow 2.16+).

    imported = time.time()
    with np.load(Path(job["prepared"]) / "train.npz") as archive:
        X_train, y_train = archive["images"], archive["labels"]  # noqa: N806 - the seed's names.
    with np.load(Path(job["prepared"]) / "validation.npz") as archive:
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
    callbacks = [clock.callback(keras.callbacks.Callback, "raise")()]
    with contextlib.suppress(BenchmarkDone):
        model.fit(X_train, y_train, epochs=10, validation_data=(X_valid, y_valid), callbacks=callbacks)
    # What Keras resolved for the seed's defaults (jit_compile="auto" means XLA on a GPU).
    device = "GPU" if ":GPU:" in model.weights[0].value.device.upper() else "CPU"
    clock.effective = {"device": device, "jit_compile": bool(model.jit_compile)}
    clock.effective["dtype_policy"] = model.dtype_policy.name
    loading = {"seconds_imports": imported - SPAWNED_AT, "seconds_data_loading": loaded - imported}
    return clock.summary(SEED_BATCH_SIZE, parameters=model.count_params(), **loading)


def compose_config(root: Path, overrides: list[str]) -> Any:
    """params.yaml of `root` plus overrides, validated: what the train stage runs with."""
    from hydra import compose, initialize

    from fashion_cnn.config import cli, schema
    from fashion_cnn.training.config import ProjectConfig

    cli.register_stage_config(root)
    with initialize(version_base="1.3", config_path=None):
        composed = compose(cli.STAGE_CONFIG_NAME, overrides=overrides)
    return schema.validate(schema.to_plain_dict(composed), ProjectConfig)


def run_project(job: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    """The train stage's own steps before and during fit, without MLflow and saving."""
    # Imported here, not at the top: the seed's process must not load this project's modules.
    from fashion_cnn.data.splits import load_split
    from fashion_cnn.model.architecture import count_parameters
    from fashion_cnn.training import distribute, loop, runtime

    imported = time.time()
    config = compose_config(Path(job["root"]), job["overrides"])
    device = runtime.select_device(config.train.device, config.train.inter_op_threads)
    strategy = distribute.make_strategy(config.train.strategy, device)
    settings = runtime.resolve_runtime(config.train, device, strategy)
    runtime.seed_everything(config.seed, config.train.deterministic)
    runtime.apply_precision(settings)
    splits = [load_split(Path(job["prepared"]), name) for name in ("train", "validation")]
    loaded = time.time()
    # fit() builds its callback from the module's EpochReport: swap in the clocked subclass. Not the chief:
    # nothing is logged to MLflow.
    loop.EpochReport = clock.callback(loop.EpochReport, "raise")
    with contextlib.suppress(BenchmarkDone):
        loop.fit(config, *splits, settings, strategy, chief=False)
    loading = {"seconds_imports": imported - SPAWNED_AT, "seconds_data_loading": loaded - imported}
    return clock.summary(config.train.batch_size, parameters=count_parameters(config.model), **loading)


def run_stage(job: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    """`python -m fashion_cnn.stages.train` (root from $FASHION_CNN_ROOT), stopped after the steps."""
    from fashion_cnn.stages import train as train_stage
    from fashion_cnn.training import loop

    imported = time.time()
    # stop_training, not an exception: the stage then validates, saves and logs as it always does.
    loop.EpochReport = clock.callback(loop.EpochReport, "stop")
    sys.argv = ["fashion_cnn.stages.train"]
    try:
        train_stage.main()
    except SystemExit as exit_request:
        if exit_request.code not in (0, None):
            raise
    total = time.time() - SPAWNED_AT
    return clock.summary(job["batch_size"], seconds_imports=imported - SPAWNED_AT, seconds_total=total)


def run_worker(
    job: dict[str, Any], log_path: Path, environment: dict, cwd: Path | None = None
) -> dict[str, Any]:
    """Run `python -m benchmarks.workers JOB` in a fresh process (by default in the log's folder)."""
    # The worker imports `benchmarks` from this folder and takes the project root from the job.
    search_path = f"{BENCHMARKS_PARENT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    environment = {**os.environ, "FASHION_CNN_ROOT": "", "PYTHONPATH": search_path, **environment}
    result_path, started = log_path.with_suffix(".json"), time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.workers", json.dumps(job), str(result_path)]
    with open(log_path, "w") as log:
        environment[SPAWNED_AT_ENV_VAR] = repr(time.time())
        try:
            process = subprocess.run(
                command,
                cwd=cwd or log_path.parent,
                env=environment,
                stdout=log,
                stderr=log,
                timeout=RUN_TIMEOUT,
            )
            ending = f"exit code {process.returncode}"
        except subprocess.TimeoutExpired:
            ending = f"killed after {RUN_TIMEOUT} s"
    wall_seconds = time.perf_counter() - started
    # The worker writes its result last, once the run is complete.
    if not result_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        return {"error": f"{ending}: {tail}", "wall_seconds": wall_seconds}
    return {**json.loads(result_path.read_text()), "wall_seconds": wall_seconds}


if __name__ == "__main__":
    job, result_path = json.loads(sys.argv[1]), Path(sys.argv[2])
    result = {"seed": run_seed, "project": run_project, "stage": run_stage}[job["kind"]](job, StepClock(job))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Through a temp file: a run killed while writing leaves no half-written result.
    result_path.with_suffix(".tmp").write_text(json.dumps(result, indent=2))
    os.replace(result_path.with_suffix(".tmp"), result_path)
