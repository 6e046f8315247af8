"""The typed schema of params.yaml and its validation with one-line errors (cli.py runs the stages).

The model section's layer entries live in layers.py; every other section is declared here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, Field, ValidationError, model_validator

from fashion_cnn.atomic import write_text_atomic
from fashion_cnn.errors import ConfigError
from fashion_cnn.layers import DenseLayer, PositiveInt, Strict
from fashion_cnn.model import LAYER_CLASSES, LAYER_TYPES, ModelConfig, infer_shapes

# ---- data, training, tracking ----


class DataConfig(Strict):
    sources: list[str] = Field(min_length=1)
    timeout_seconds: Annotated[float, Field(gt=0, le=120)]
    validation_size: PositiveInt
    max_train_images: PositiveInt | None = None
    max_test_images: PositiveInt | None = None


class ScheduleConfig(Strict):
    """How the learning rate moves over training; train.learning_rate is its peak."""

    name: Literal["constant", "cosine", "one_cycle", "step"]
    # one_cycle: share of all steps spent warming up linearly to the peak.
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)]
    # cosine and one_cycle: the last learning rate, as a fraction of the peak.
    final_fraction: Annotated[float, Field(ge=0, le=1)]
    # step: multiply the learning rate by step_factor every step_epochs epochs.
    step_epochs: PositiveInt
    step_factor: Annotated[float, Field(gt=0, le=1)]


class AugmentationConfig(Strict):
    """Random changes to training batches only; validation and test images are never augmented."""

    shift_pixels: Annotated[int, Field(ge=0, le=14)]
    horizontal_flip: bool
    # Probability that an image gets one random rectangle erased.
    random_erasing: Annotated[float, Field(ge=0, le=1)]

    @property
    def enabled(self) -> bool:
        return self.shift_pixels > 0 or self.horizontal_flip or self.random_erasing > 0


class TrainConfig(Strict):
    optimizer: Literal["nadam", "adam", "sgd", "rmsprop"]
    learning_rate: Annotated[float, Field(gt=0)]
    learning_rate_scaling: Literal["none", "linear"]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    batch_size: PositiveInt
    epochs: PositiveInt
    device: Literal["auto", "cpu", "gpu"]
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"]
    mixed_precision: Literal["none", "auto", "mixed_float16", "mixed_bfloat16"]
    jit_compile: Literal["off", "on", "auto"]
    steps_per_execution: PositiveInt
    # TensorFlow's inter-op thread pool: 0 is TensorFlow's own choice (one thread per core).
    inter_op_threads: Annotated[int, Field(ge=0)]
    deterministic: bool
    # The recipe beyond the seed's (all off by default): see fashion_cnn.recipe and .augmentation.
    schedule: ScheduleConfig
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    augmentation: AugmentationConfig
    checkpoint: bool


class TrackingConfig(Strict):
    experiment_name: str = Field(min_length=1)
    pipeline_experiment_name: str = Field(min_length=1)


class ProjectConfig(Strict):
    seed: Annotated[int, Field(ge=0)]
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    tracking: TrackingConfig

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
