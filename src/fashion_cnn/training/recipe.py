"""The training recipe: the optimizer, its learning-rate schedule, the loss, and what fit() is fed.

All of it is off by default (constant learning rate, no smoothing, no augmentation): the seed's
recipe, fed as seeded tf.data batches that are reshuffled every epoch (fashion_cnn.training.augmentation).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from fashion_cnn.data.idx import NUM_CLASSES
from fashion_cnn.data.splits import Split
from fashion_cnn.errors import ConfigError
from fashion_cnn.training import augmentation
from fashion_cnn.training.config import ProjectConfig, TrainConfig

# one_cycle starts at the peak divided by this (PyTorch's OneCycleLR div_factor).
ONE_CYCLE_START_DIVISOR = 25.0


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Gradient steps in one pass over the training split (the last batch may be smaller)."""
    return math.ceil(train_images / batch_size)


def check_steps_per_execution(steps_in_epoch: int, steps_per_execution: int) -> None:
    """ConfigError unless train.steps_per_execution divides the steps of an epoch.

    Keras runs whole executions over one dataset that spans all epochs: with a remainder, every
    epoch after the first starts mid-way and the history rows and resumed runs no longer line up.
    """
    if steps_in_epoch % steps_per_execution == 0:
        return
    divisors = [value for value in range(1, steps_in_epoch + 1) if steps_in_epoch % value == 0]
    below = max(value for value in divisors if value < steps_per_execution)
    above = [value for value in divisors if value > steps_per_execution]
    nearest = f"{below} or {above[0]}" if above else str(below)
    raise ConfigError(
        f"invalid params: train.steps_per_execution = {steps_per_execution} does not divide the "
        f"{steps_in_epoch} steps of an epoch (Keras would shift every epoch's batches); nearest "
        f"values that do: {nearest}"
    )


def learning_rate(
    train_config: TrainConfig, steps_in_epoch: int, peak: float | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: `peak` (default train.learning_rate), or a schedule that peaks at it."""
    peak = train_config.learning_rate if peak is None else peak
    schedule = train_config.schedule
    total_steps = steps_in_epoch * train_config.epochs
    if schedule.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, total_steps, alpha=schedule.final_fraction)
    if schedule.name == "one_cycle":
        # Linear warm-up from peak / 25 to the peak, then cosine annealing down to the final rate.
        warmup_steps = round(total_steps * schedule.warmup_fraction)
        return keras.optimizers.schedules.CosineDecay(
            peak / ONE_CYCLE_START_DIVISOR,
            max(total_steps - warmup_steps, 1),
            alpha=schedule.final_fraction,
            warmup_target=peak,
            warmup_steps=warmup_steps,
        )
    if schedule.name == "step":
        step_count = math.ceil(train_config.epochs / schedule.step_epochs) - 1
        if step_count > 0:
            boundaries = [steps_in_epoch * schedule.step_epochs * (index + 1) for index in range(step_count)]
            values = [peak * schedule.step_factor**index for index in range(step_count + 1)]
            return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return peak


def optimizer(
    train_config: TrainConfig, peak_rate: float, steps_per_epoch: int = 1
) -> keras.optimizers.Optimizer:
    """The optimizer named in params, with its learning rate or a schedule peaking at `peak_rate`
    (and momentum for sgd)."""
    rate = learning_rate(train_config, steps_per_epoch, peak_rate)
    # Decoupled weight decay (AdamW-style in Keras 3); None is the optimizers' own default.
    weight_decay = train_config.weight_decay or None
    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=rate, momentum=train_config.momentum, weight_decay=weight_decay
        )
    optimizers = {
        "nadam": keras.optimizers.Nadam,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    return optimizers[train_config.optimizer](learning_rate=rate, weight_decay=weight_decay)


def loss(train_config: TrainConfig) -> str | keras.losses.Loss:
    """Cross-entropy on integer labels; with label smoothing, on one-hot labels (Keras 3's sparse loss
    has no label_smoothing)."""
    if train_config.label_smoothing == 0:
        return "sparse_categorical_crossentropy"
    return keras.losses.CategoricalCrossentropy(label_smoothing=train_config.label_smoothing)


def encode_labels(labels: np.ndarray, train_config: TrainConfig) -> np.ndarray:
    """The labels as the loss expects them: as they are (count,), or one-hot (count, 10) float32."""
    if train_config.label_smoothing == 0:
        return labels
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def fit_arguments(
    config: ProjectConfig,
    train_split: Split,
    validation_split: Split,
    batch_size: int | None = None,
    first_epoch: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of model.fit for the data: seeded tf.data batches, reshuffled every epoch.

    `batch_size` is the global batch (default train.batch_size; more under a distribution strategy);
    `first_epoch` is where a resumed run starts. Training batches are augmented when
    train.augmentation is on; validation data are always the plain arrays, never augmented.
    """
    train_config = config.train
    batch_size = batch_size or train_config.batch_size
    train_labels = encode_labels(train_split.labels, train_config)
    validation_data = (validation_split.images, encode_labels(validation_split.labels, train_config))
    dataset = augmentation.training_dataset(
        train_split.images,
        train_labels,
        batch_size,
        train_config.epochs,
        train_config.augmentation,
        config.seed,
        first_epoch,
    )
    return {
        "x": dataset,
        "steps_per_epoch": steps_per_epoch(len(train_split.labels), batch_size),
        "validation_data": validation_data,
        "validation_batch_size": train_config.validation_batch_size or batch_size,
        "shuffle": False,  # the dataset shuffles itself; Keras would only warn that it ignores True
    }
