"""The typed schema of params.yaml and its validation with one-line errors (cli.py runs the stages).

The model section's layer entries live in layers.py; every other section is declared here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, Field, ValidationError, model_validator

from fashion_cnn.errors import ConfigError
from fashion_cnn.model.architecture import LAYER_CLASSES, LAYER_TYPES, ModelConfig, infer_shapes
from fashion_cnn.model.layers import DenseLayer, PositiveInt, Strict
from fashion_cnn.utils.atomic import write_text_atomic

# ---- data, training, tracking ----


class DataConfig(Strict):
    """Where the four Fashion-MNIST files come from and how they are split."""

    sources: list[str] = Field(min_length=1)
    """Local folders or HTTP(S) mirrors tried in order until one gives all four files with the right
    checksums (Debian's dataset-fashion-mnist installs the first); FASHION_CNN_MIRROR prepends one."""
    timeout_seconds: Annotated[float, Field(gt=0, le=120)]
    """Seconds an HTTP request may wait to connect and for each read."""
    deadline_seconds: Annotated[float, Field(gt=0, le=7200)]
    """Seconds one file's download from one source may take in all (checked between reads); past
    it the next source is tried. 600 s asks at least 44 kB/s of the largest .gz (26 MB)."""
    validation_size: PositiveInt
    """The last N of the 60,000 training images become the validation split (the seed: 5,000)."""
    max_train_images: PositiveInt | None = None
    """Use only the first N training images (null: all); for quick profiles and tests."""
    max_test_images: PositiveInt | None = None
    """Use only the first N test images (null: all)."""


class ScheduleConfig(Strict):
    """How the learning rate moves over training; train.learning_rate is its peak."""

    name: Literal["constant", "cosine", "one_cycle", "step"]
    """constant (the seed's), cosine (decay over all steps), one_cycle (linear warm-up from
    learning_rate / 25, then cosine decay) or step (times step_factor every step_epochs)."""
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)]
    """one_cycle: the share of all training steps spent warming up to the peak."""
    final_fraction: Annotated[float, Field(ge=0, le=1)]
    """cosine and one_cycle: the last learning rate, as a fraction of the peak."""
    step_epochs: PositiveInt
    """step: epochs between two drops of the learning rate."""
    step_factor: Annotated[float, Field(gt=0, le=1)]
    """step: the factor applied at each drop."""


class AugmentationConfig(Strict):
    """Random changes to training batches only; validation and test images are never augmented."""

    shift_pixels: Annotated[int, Field(ge=0, le=14)]
    """Move each image by up to N pixels along each axis, padding with the mean image; 0: off."""
    horizontal_flip: bool
    """Mirror half of the images left-right."""
    random_erasing: Annotated[float, Field(ge=0, le=1)]
    """Probability that an image gets one random rectangle (2-40% of its area) set to the mean image
    (random erasing, Zhong et al. 2017); 0: off."""

    @property
    def enabled(self) -> bool:
        return self.shift_pixels > 0 or self.horizontal_flip or self.random_erasing > 0


class TrainConfig(Strict):
    """How the model is trained: optimizer, batches, devices, speed settings and the recipe."""

    optimizer: Literal["nadam", "adam", "sgd", "rmsprop"]
    """nadam (the seed's), adam, sgd (with momentum) or rmsprop."""
    learning_rate: Annotated[float, Field(gt=0)]
    """Step size of the optimizer per gradient step of the global batch; a schedule's peak."""
    learning_rate_scaling: Literal["none", "linear"]
    """none: learning_rate as given; linear: learning_rate x replicas, for a global batch that grows
    with the replicas."""
    momentum: Annotated[float, Field(ge=0, lt=1)]
    """Momentum, used by sgd only."""
    batch_size: PositiveInt
    """Images per gradient step on each replica; the global batch is batch_size x replicas."""
    validation_batch_size: PositiveInt | None
    """Images per step when scoring the validation split after each epoch; null: the global training
    batch. Larger means fewer, bigger steps (a GPU's choice); the numbers do not change."""
    epochs: PositiveInt
    """Passes over the training split."""
    device: Literal["auto", "cpu", "gpu"]
    """auto: a GPU when TensorFlow sees one, else the CPU; cpu or gpu force one (gpu fails without one)."""
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"]
    """How training spreads over devices: auto (one device, or mirrored over several GPUs), one_device,
    mirrored (every local GPU, else every logical CPU) or multi_worker (the machines in TF_CONFIG)."""
    mixed_precision: Literal["none", "auto", "mixed_float16", "mixed_bfloat16"]
    """none, auto (mixed_float16 on a GPU, none on a CPU), mixed_float16 or mixed_bfloat16."""
    jit_compile: Literal["off", "on", "auto"]
    """XLA compilation of the train step: off, on (needs deterministic: false), or auto (on for a GPU
    when deterministic is false)."""
    steps_per_execution: PositiveInt
    """Train steps per call into TensorFlow (higher cuts Python overhead); must divide the steps of an
    epoch."""
    inter_op_threads: Annotated[int, Field(ge=0)]
    """Threads running independent TensorFlow ops side by side: 0 is TensorFlow's choice (one per
    core); 1 runs one op at a time. It never changes the numbers."""
    deterministic: bool
    """Deterministic TensorFlow ops: identical metrics on rerun on the same machine; slightly slower,
    and no XLA."""
    schedule: ScheduleConfig
    """The learning-rate schedule (fashion_cnn.training.recipe)."""
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    """Label smoothing of the training objective's cross-entropy (0: off, the seed's; 0.1 is common)."""
    weight_decay: Annotated[float, Field(ge=0)]
    """Decoupled weight decay per step, times the learning rate (AdamW-style); 0: off, the seed's."""
    augmentation: AugmentationConfig
    """Random changes to training batches (fashion_cnn.training.augmentation); all off by default."""
    checkpoint: bool
    """Save the training state after every epoch in checkpoints/, so an interrupted run resumes after
    its last completed epoch; removed when training completes."""


class TrackingConfig(Strict):
    """The MLflow experiments the stages log to."""

    experiment_name: str = Field(min_length=1)
    """The experiment holding one run per trained model (train, evaluate and figures log into it)."""
    pipeline_experiment_name: str = Field(min_length=1)
    """The experiment for the stages that train no model (download, prepare, memory, seed figures)."""


class ProjectConfig(Strict):
    """params.yaml: every value a stage runs with."""

    seed: Annotated[int, Field(ge=0)]
    """Seeds Python, NumPy and TensorFlow (weight initialization, shuffling, dropout, augmentation)."""
    data: DataConfig
    """The data and its splits."""
    model: ModelConfig
    """The architecture, as data (presets: conf/model/)."""
    train: TrainConfig
    """The training recipe and how it runs."""
    tracking: TrackingConfig
    """Where MLflow records the runs."""

    @model_validator(mode="after")
    def _xla_only_without_determinism(self) -> ProjectConfig:
        # Keras turns XLA off under deterministic ops and only warns: refuse the pair instead of
        # running (and recording) something other than what was asked.
        if self.train.jit_compile == "on" and self.train.deterministic:
            raise ValueError(
                "train.jit_compile = 'on' contradicts train.deterministic = true: Keras runs no XLA "
                "under deterministic ops; choose train.deterministic=false for XLA, or "
                "train.jit_compile=off for identical reruns"
            )
        return self

    @model_validator(mode="after")
    def _output_layer_matches_classes(self) -> ProjectConfig:
        last = self.model.layers[-1]
        if not (isinstance(last, DenseLayer) and last.units == 10):
            index = len(self.model.layers) - 1
            raise ValueError(
                f"model.layers.{index}: the last layer must be a dense layer with units 10 "
                f"(one per Fashion-MNIST class), got {last.model_dump()}"
            )
        return self


# ---- turning validation errors into one line ----


def allowed_keys(config_class: type[BaseModel], loc: tuple, raw: Any) -> list[str]:
    """Walk `loc` down the schema from `config_class` and list the keys allowed where it ends."""
    current: Any = config_class
    node = raw
    for index, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else {}
            layer_type = node.get("type") if isinstance(node, dict) else None
            current = LAYER_CLASSES.get(layer_type, current)
            continue
        if _is_layer_tag(loc, index):
            continue
        node = node.get(part, {}) if isinstance(node, dict) else {}
        field = current.model_fields.get(part) if isinstance(current, type) else None
        annotation = field.annotation if field else None
        current = annotation if isinstance(annotation, type) else current
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _dotted(loc: tuple) -> str:
    """('model', 'layers', 3, 'conv', 'filters') -> 'model.layers.3.filters'."""
    kept = [str(part) for index, part in enumerate(loc) if not _is_layer_tag(loc, index)]
    return ".".join(kept)


def _is_layer_tag(loc: tuple, index: int) -> bool:
    """Whether loc[index] is the layer type pydantic inserts after a list index (not a key such as
    'activation', which is both a layer type and a key)."""
    return index > 0 and isinstance(loc[index - 1], int) and loc[index] in LAYER_TYPES


def unknown_key_message(key: str, allowed: list[str]) -> str:
    """Name the unknown key, the allowed key it most resembles, and every key allowed there."""
    close = difflib.get_close_matches(key.rpartition(".")[2], allowed, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}' ({guess}allowed here: {', '.join(allowed)})"


def format_validation_error(error: ValidationError, raw: dict) -> str:
    """One line naming the key, the bad value and what is allowed."""
    # A misspelt key in params.yaml is both unknown and missing: report the spelling first.
    first = min(error.errors(), key=lambda item: item["type"] != "extra_forbidden")
    key = _dotted(first["loc"]) or "params"
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        message = unknown_key_message(key, allowed_keys(ProjectConfig, first["loc"], raw))
    elif first["type"] == "union_tag_invalid":
        message = f"{key}.type = {value.get('type')!r}: unknown layer type (allowed: "
        message += ", ".join(LAYER_TYPES) + ")"
    elif first["type"] == "missing":
        message = f"missing key '{key}'"
    elif not first["loc"]:
        # A check across keys (model_validator): its message names the key itself.
        message = first["msg"].removeprefix("Value error, ")
    else:
        message = f"{key} = {value!r}: {first['msg']}"
    more = len(error.errors()) - 1
    return message + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validate(raw: dict) -> ProjectConfig:
    """Validate a plain dict (a resolved config) against the schema and the model's layer shapes.

    Raises ConfigError, so that an impossible model stops a stage before it starts any work.
    """
    try:
        config = ProjectConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid params: {format_validation_error(error, raw)}") from None
    infer_shapes(config.model)
    return config


def to_plain_dict(cfg: DictConfig) -> dict:
    """The composed Hydra config as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'model': {'layers': [{'filters': 64}]}} -> {'model.layers.0.filters': 64} (for MLflow params)."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    items: dict[str, Any] = {}
    children = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in children:
        dotted = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            items.update(flatten(value, dotted + "."))
        else:
            items[dotted] = value
    return items


def save_resolved(config: ProjectConfig, path: Path) -> None:
    """Write the validated config as YAML beside a stage's outputs, atomically."""
    text = OmegaConf.to_yaml(OmegaConf.create(config.model_dump(mode="json")))
    write_text_atomic(path, text)
