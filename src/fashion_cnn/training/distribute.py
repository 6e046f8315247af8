"""Training on several devices or machines with TensorFlow's own strategies (train.strategy).

`auto` keeps one process on one device (no strategy at all, so the default numerics do not move)
unless more than one GPU is visible; `mirrored` copies the model to every local device;
`multi_worker` joins the cluster that the standard TF_CONFIG environment variable describes.
train.batch_size is per replica: the global batch, one gradient step, is batch_size x replicas.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from fashion_cnn.errors import ConfigError
from fashion_cnn.training import trained_model
from fashion_cnn.training.config import TrainConfig

log = logging.getLogger(__name__)

TF_CONFIG_VAR = "TF_CONFIG"
# The task types MultiWorkerMirroredStrategy trains with (an evaluator or parameter server does not).
TRAINING_TASK_TYPES = ("chief", "worker")
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


@dataclass(frozen=True)
class Task:
    """This process's place in the training cluster: one worker of `workers`, chief or not."""

    task_type: str
    index: int
    workers: int
    # Whether TF_CONFIG's cluster names a separate 'chief' task (then worker 0 is an ordinary worker).
    cluster_has_chief: bool

    @property
    def is_chief(self) -> bool:
        """The chief writes the outputs and logs to MLflow: the 'chief' task, else worker 0 (TF's rule)."""
        if self.cluster_has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0


# A single process training alone: it is its own chief.
SINGLE_PROCESS = Task(task_type="chief", index=0, workers=1, cluster_has_chief=True)


def _tf_config_error(raw: str, problem: str) -> ConfigError:
    """One line naming TF_CONFIG, its value and what it must hold."""
    shown = raw if len(raw) <= 120 else raw[:117] + "..."
    return ConfigError(
        f"{TF_CONFIG_VAR} = {shown!r}: {problem} (train.strategy = 'multi_worker' needs JSON such as "
        f"{TF_CONFIG_EXAMPLE})"
    )


def parse_tf_config(raw: str | None) -> Task:
    """Validate a TF_CONFIG value for multi-worker training and return this process's task."""
    if not raw or not raw.strip():
        raise ConfigError(
            f"invalid params: train.strategy = 'multi_worker' needs the {TF_CONFIG_VAR} environment "
            f"variable, which is not set (e.g. {TF_CONFIG_VAR}='{TF_CONFIG_EXAMPLE}')"
        )
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _tf_config_error(raw, f"not valid JSON ({error.msg})") from None
    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error(raw, "no 'cluster' object")
    for task_type, addresses in cluster.items():
        if not (isinstance(addresses, list) and addresses and all(_is_address(item) for item in addresses)):
            raise _tf_config_error(raw, f"cluster.{task_type} must be a list of 'host:port' strings")
    if not any(task_type in cluster for task_type in TRAINING_TASK_TYPES):
        raise _tf_config_error(raw, "the cluster has no 'worker' (or 'chief') list")
    if not isinstance(task, dict):
        raise _tf_config_error(raw, "no 'task' object saying which worker this process is")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in TRAINING_TASK_TYPES or task_type not in cluster:
        allowed = ", ".join(name for name in TRAINING_TASK_TYPES if name in cluster)
        raise _tf_config_error(raw, f"task.type = {task_type!r} (allowed: {allowed})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise _tf_config_error(
            raw, f"task.index = {index!r} is not one of the {len(cluster[task_type])} {task_type} addresses"
        )
    workers = sum(len(cluster.get(name, [])) for name in TRAINING_TASK_TYPES)
    return Task(task_type=task_type, index=index, workers=workers, cluster_has_chief="chief" in cluster)


def _is_address(item: Any) -> bool:
    """'host:port' with a numeric port."""
    if not isinstance(item, str):
        return False
    host, _, port = item.rpartition(":")
    return bool(host) and port.isdigit()


def current_task(strategy_name: str, environ: Mapping[str, str] | None = None) -> Task:
    """This process's task: from TF_CONFIG under multi_worker (validated), else a lone chief."""
    environ = os.environ if environ is None else environ
    if strategy_name == "multi_worker":
        return parse_tf_config(environ.get(TF_CONFIG_VAR))
    if environ.get(TF_CONFIG_VAR):
        log.warning(
            "%s is set but train.strategy is %r: training in this process only (use multi_worker)",
            TF_CONFIG_VAR,
            strategy_name,
        )
    return SINGLE_PROCESS


# Hydra settings for a worker other than the chief: no run folder and no log file in the repository.
NON_CHIEF_HYDRA_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def hydra_overrides_for_worker(environ: Mapping[str, str] | None = None) -> list[str]:
    """Overrides that keep Hydra's run folder out of the repository when TF_CONFIG names a non-chief task.

    They go on the command line before Hydra starts, which is before params are read; an invalid
    TF_CONFIG adds none here and is reported by the stage when train.strategy needs it.
    """
    environ = os.environ if environ is None else environ
    if not environ.get(TF_CONFIG_VAR):
        return []
    try:
        task = parse_tf_config(environ[TF_CONFIG_VAR])
    except ConfigError:
        return []
    return [] if task.is_chief else list(NON_CHIEF_HYDRA_OVERRIDES)


def keep_worker_hydra_files_out() -> None:
    """Add hydra_overrides_for_worker's overrides to this process's command line (call it before the
    stage's Hydra app starts).

    Hydra takes its settings only from the command line, and a non-chief worker is started with the
    same command as the chief (the launcher differs only in TF_CONFIG), so this is the one place where
    the command line is extended.
    """
    sys.argv.extend(hydra_overrides_for_worker())


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose reduce accepts the two values Keras 3's fit passes it.

    Under more than one worker, Keras 3 (3.15 here; keras-team/keras#20585, tensorflow#72388)
    calls Strategy.reduce with (1) its first (images, labels) batch, a nested value TensorFlow's
    reduce does not take, only to read shapes and dtypes, and (2) every scalar metric with axis=0,
    which a scalar does not have. This reads (1) from the local replica and reduces (2) across
    replicas only, which is what both mean; any other value is reduced by TensorFlow unchanged.
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        """Strategy.reduce, plus a nested value (read locally) and axis=0 on scalars (no batch axis)."""
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda item: self.experimental_local_results(item)[0], value)
        if axis == 0 and self.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def make_strategy(strategy_name: str, device: str) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy for train.strategy on `device` ('CPU' or 'GPU'); None = TF's default.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy configures collective ops,
    which TensorFlow allows only at program start-up.
    """
    if strategy_name == "multi_worker":
        return KerasMultiWorkerStrategy()
    if strategy_name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if device == "GPU" else "/cpu:0")
    # get_visible_devices does not start the runtime, so `auto` leaves TensorFlow exactly as before.
    visible_gpus = tf.config.get_visible_devices("GPU") if device == "GPU" else []
    if strategy_name == "mirrored" or len(visible_gpus) > 1:
        # Every local GPU; without GPUs every logical CPU device (one, unless the CPU was split).
        devices = tf.config.list_logical_devices("GPU") if device == "GPU" else []
        devices = devices or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[item.name for item in devices])
    return None


def strategy_scope(strategy: tf.distribute.Strategy | None) -> contextlib.AbstractContextManager:
    """Where the model and optimizer must be built: the strategy's scope, or nothing for the default."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replica_count(strategy: tf.distribute.Strategy | None) -> int:
    """Model copies that each take a share of every global batch (all devices of all workers)."""
    return strategy.num_replicas_in_sync if strategy is not None else 1


def global_batch_size(train_config: TrainConfig, replicas: int) -> int:
    """Images per gradient step: train.batch_size on each replica, so batch_size x replicas in all."""
    return train_config.batch_size * replicas


def effective_learning_rate(train_config: TrainConfig, replicas: int) -> float:
    """train.learning_rate, times the replicas under learning_rate_scaling = linear (Goyal et al. 2017)."""
    if train_config.learning_rate_scaling == "linear":
        return train_config.learning_rate * replicas
    return train_config.learning_rate


def wait_for_all_workers(strategy: tf.distribute.Strategy | None) -> None:
    """Under multi_worker, return once every worker is here (a one-number all-reduce).

    Without it a worker that finishes first exits while the chief is still saving and logging,
    and the chief's TensorFlow reports the departed worker as crashed.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # A plain tensor is all-reduced as one value per worker; no replica function needs to run.
        strategy.reduce("SUM", tf.constant(1.0), axis=None)


@contextlib.contextmanager
def scratch_model_path(file_name: str) -> Iterator[Path]:
    """A path outside the repository for a non-chief worker's copy of the model, removed afterwards.

    Every worker must call model.save (TensorFlow's multi-worker saving rule: saving may run
    collective ops all workers take part in), but only the chief's copy is kept.
    """
    directory = Path(tempfile.mkdtemp(prefix="fashion-cnn-worker-"))
    try:
        yield directory / file_name
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def announce(task: Task) -> None:
    """One line on a worker other than the chief saying what it does; nothing on the chief."""
    if not task.is_chief:
        print(f"worker {task.task_type}:{task.index} of {task.workers}: training; the chief writes and logs")


def train_as_worker(strategy: tf.distribute.Strategy | None, train: Callable[[], Any]) -> None:
    """A worker other than the chief: `train()` in step with the others (it returns the model), take
    part in saving, write nothing, and leave only once every worker is done."""
    model = train()
    # Every worker takes part in saving (TensorFlow's multi-worker rule); this copy is discarded.
    with scratch_model_path("model.keras") as scratch:
        model.save(scratch)
    wait_for_all_workers(strategy)


def plain_model(model: Any, strategy: tf.distribute.Strategy | None, saved_file: Path) -> Any:
    """The model to log to MLflow: itself, or, when distributed (its predict would wait for the other
    workers), the copy the chief saved, loaded outside the strategy."""
    return model if strategy is None else trained_model.load_model(saved_file)
