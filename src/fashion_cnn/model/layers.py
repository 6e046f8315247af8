"""The architecture as data: what every layer type of `model.layers` provides, and the types that
work per position or make the head: batch norm, activation, dropout, flatten, global average pooling,
dense. spatial_layers.py holds the types that slide a window over the image.

Each entry validates its own keys (pydantic), computes what it does to an input shape (output shape,
parameters, multiply-adds per image), names itself for summaries and reports, and builds its Keras
layer. architecture.py joins every type into the one list (LAYER_CLASSES) from which the schema,
shape checks, counts, the memory report and the builder derive.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fashion_cnn.config.schema import PositiveInt, Strict
from fashion_cnn.errors import ConfigError

ACTIVATIONS = ("relu", "elu", "gelu", "selu", "swish", "tanh", "sigmoid", "softmax", "linear")
# Weights batch normalization keeps per channel: scale and offset (trained), moving mean and variance.
BATCH_NORM_WEIGHTS = 4

Shape = tuple[int, ...]  # one image's shape, without the batch axis


def keras_layers() -> Any:
    """keras.layers, imported on first use: Keras takes seconds to import and most stages never build."""
    from keras import layers

    return layers


class LayerEntry(Strict):
    """What every layer type provides; subclasses narrow `type` and add their keys."""

    type: str
    """The layer type."""
    # Whether the layer slides over an image and needs (height, width, channels) input.
    needs_image: ClassVar[bool] = False

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        """(output shape, parameters, multiply-adds per image) on an input of `shape`."""
        return shape, 0, 0

    @property
    def summary(self) -> str:
        """A short token of the model summary, e.g. 'conv64x7'."""
        return self.type

    @property
    def description(self) -> str:
        """The layer's kind in the memory report, e.g. 'conv 64 7x7/1 same'."""
        return self.type

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        """The Keras layer of this entry."""
        raise NotImplementedError


class BatchNormLayer(LayerEntry):
    type: Literal["batch_norm"]
    """batch_norm: batch normalization."""
    momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    """Weight of the old value in the moving mean and variance used at inference (Keras's default
    0.99; 0.9, PyTorch's default, suits runs of a few thousand steps)."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        return shape, BATCH_NORM_WEIGHTS * shape[-1], 0

    @property
    def summary(self) -> str:
        return "bn"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.BatchNormalization(momentum=self.momentum, name=name)


class ActivationLayer(LayerEntry):
    """A bare activation, for conv (activation linear) -> batch_norm -> activation orderings."""

    type: Literal["activation"]
    """activation: a bare activation."""
    activation: Literal[ACTIVATIONS]
    """The activation function."""

    @property
    def summary(self) -> str:
        return self.activation

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.Activation(self.activation, name=name)


class DropoutLayer(LayerEntry):
    type: Literal["dropout"]
    """dropout: zero a random share of the values while training."""
    rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    """The share of values zeroed at each training step."""

    @property
    def summary(self) -> str:
        return f"drop{self.rate:g}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.Dropout(self.rate, name=name)


class FlattenLayer(LayerEntry):
    type: Literal["flatten"]
    """flatten: (height, width, channels) to one vector."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        return (math.prod(shape),), 0, 0

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.Flatten(name=name)


class GlobalAvgPoolLayer(LayerEntry):
    type: Literal["global_avg_pool"]
    """global_avg_pool: the mean of each feature map, (height, width, channels) to (channels)."""
    needs_image: ClassVar[bool] = True

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        return (shape[-1],), 0, 0

    @property
    def summary(self) -> str:
        return "gap"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.GlobalAveragePooling2D(name=name)


class DenseLayer(LayerEntry):
    type: Literal["dense"]
    """dense: a fully connected layer."""
    units: PositiveInt
    """Output values (neurons); the last layer needs 10, one per class."""
    activation: Literal[ACTIVATIONS] = "relu"
    """The activation (softmax for the last layer)."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        if len(shape) != 1:
            raise ConfigError(
                f".type = 'dense': needs a flat input but gets shape {shape}; add a flatten layer before it"
            )
        return (self.units,), (shape[0] + 1) * self.units, shape[0] * self.units

    @property
    def summary(self) -> str:
        return f"dense{self.units}"

    @property
    def description(self) -> str:
        return f"dense {self.units}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        # The output layer stays float32 under mixed precision, for a stable softmax.
        dtype = "float32" if is_output else None
        return layers.Dense(self.units, activation=self.activation, name=name, dtype=dtype)
