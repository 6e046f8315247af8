"""The train section of params.yaml, and the whole file as the config of one training run.

ProjectConfig joins every section (seed, data, model, train, tracking): the train stage and the
stages that follow the trained model (evaluate, model_figures, memory) validate all of it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from fashion_cnn.config.schema import ParamsSchema, PositiveInt, Strict
from fashion_cnn.config.sections import DataConfig, TrackingConfig
from fashion_cnn.model.architecture import LAYER_CLASSES, ModelConfig, infer_shapes
from fashion_cnn.model.layers import DenseLayer


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


class ProjectConfig(ParamsSchema):
    """params.yaml: every value a training run, and the stages that follow it, run with."""

    TAGGED_ENTRIES: ClassVar[dict[str, type[BaseModel]]] = LAYER_CLASSES

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

    def check(self) -> None:
        """Every layer's output shape, computed before any work: an impossible model is one line."""
        infer_shapes(self.model)
