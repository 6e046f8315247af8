"""Where and how training runs: the settings asked for in params, and what took effect once fit started.

`resolve_runtime` turns train.device, .mixed_precision, .jit_compile and the distribution strategy
into a frozen `Runtime`; `read_back` asks the compiled model and TensorFlow what they actually do.
Only the read-back values are printed and logged, so a setting Keras silently overrode (XLA under
deterministic ops, say) is never reported as on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import tensorflow as tf

# Keras reads the same private flag to decide whether XLA may run (keras.src.trainers.trainer).
from tensorflow.python.framework.config import is_op_determinism_enabled

from fashion_cnn.errors import ConfigError
from fashion_cnn.training import distribute
from fashion_cnn.training.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    """The concrete settings training is started with ('auto' resolved for this device and strategy)."""

    device: str  # "CPU" or "GPU"
    mixed_precision: str  # "none", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool  # XLA asked for; Keras may still refuse it (see read_back)
    strategy: str  # the tf.distribute strategy's class name, or "default"
    replicas: int
    global_batch_size: int
    learning_rate: float  # the peak rate after learning_rate_scaling
    inter_op_threads: int  # TensorFlow's inter-op pool (0: its own choice)

    def as_dict(self) -> dict[str, str | int | float | bool]:
        """The fields by name (for JSON and MLflow)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Effective:
    """What the running model and TensorFlow report, read after compile once fit has started."""

    device: str  # where the model's first weight lives: "CPU" or "GPU"
    jit_compile: bool  # model.jit_compile: XLA really used for the train step
    dtype_policy: str  # the model's compute/variable policy, e.g. "float32", "mixed_bfloat16"
    output_dtype: str  # the last layer's compute dtype (float32 keeps the softmax stable)
    deterministic: bool  # TensorFlow's op determinism flag

    def describe(self) -> str:
        """One line for the log, e.g. 'CPU, XLA off, dtype policy float32, deterministic ops on'."""
        return (
            f"{self.device}, XLA {'on' if self.jit_compile else 'off'}, dtype policy {self.dtype_policy} "
            f"(output {self.output_dtype}), deterministic ops {'on' if self.deterministic else 'off'}"
        )

    def as_params(self) -> dict[str, str | bool]:
        """MLflow params under runtime.* (what ran, not what was asked)."""
        return {f"runtime.{key}": value for key, value in dataclasses.asdict(self).items()}


def select_device(requested: str, inter_op_threads: int) -> str:
    """'GPU' when asked for (or auto and one is visible), else 'CPU'; a missing GPU is an error.

    Also sizes TensorFlow's inter-op thread pool (0: TensorFlow's choice), which must happen before
    TensorFlow runs its first op; the thread count changes the speed, never the numbers.
    """
    if inter_op_threads and tf.config.threading.get_inter_op_parallelism_threads() != inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if requested == "gpu" and not gpus:
        raise ConfigError(
            "invalid params: train.device = 'gpu': TensorFlow sees no GPU on this machine "
            "(allowed: auto, cpu, gpu; install the GPU extra with `pip install -e .[gpu]`)"
        )
    if requested == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    return "GPU" if gpus and requested != "cpu" else "CPU"


def resolve_runtime(
    train_config: TrainConfig, device: str, strategy: tf.distribute.Strategy | None
) -> Runtime:
    """Turn the 'auto' settings into concrete ones for this device and strategy.

    jit_compile auto means XLA on a GPU, unless train.deterministic is on: Keras turns XLA off
    under deterministic ops, so asking for it then would only be ignored (config.py refuses 'on').
    """
    precision = train_config.mixed_precision
    if precision == "auto":
        precision = "mixed_float16" if device == "GPU" else "none"
    jit = train_config.jit_compile == "on" or (
        train_config.jit_compile == "auto" and device == "GPU" and not train_config.deterministic
    )
    replicas = distribute.replica_count(strategy)
    return Runtime(
        device=device,
        mixed_precision=precision,
        jit_compile=jit,
        strategy=type(strategy).__name__ if strategy is not None else "default",
        replicas=replicas,
        global_batch_size=distribute.global_batch_size(train_config, replicas),
        learning_rate=distribute.effective_learning_rate(train_config, replicas),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )


def apply_precision(settings: Runtime) -> None:
    """Set Keras's global dtype policy for the models built from now on: float32, or the mixed policy
    the settings resolved (mixed_float16 or mixed_bfloat16)."""
    keras.mixed_precision.set_global_policy(
        "float32" if settings.mixed_precision == "none" else settings.mixed_precision
    )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow from one key; optionally force deterministic TF ops."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _device_type(variable: keras.Variable) -> str:
    """'GPU' or 'CPU' from a weight's placement, e.g. '/job:localhost/replica:0/task:0/device:CPU:0'."""
    value = variable.value
    # Under a distribution strategy a weight is mirrored: look at its first component.
    component = value.values[0] if hasattr(value, "values") else value
    return "GPU" if ":GPU:" in component.device.upper() else "CPU"


def read_back(model: keras.Model) -> Effective:
    """What the compiled model really runs with (call it once fit has started)."""
    return Effective(
        device=_device_type(model.weights[0]),
        jit_compile=bool(model.jit_compile),
        dtype_policy=model.dtype_policy.name,
        output_dtype=str(model.layers[-1].compute_dtype),
        deterministic=bool(is_op_determinism_enabled()),
    )
