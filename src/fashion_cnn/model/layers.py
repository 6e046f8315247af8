"""The architecture as data: one class per layer type of `model.layers`; here the seed's types
(conv, pooling, flatten, dense, dropout) and what every type provides.

Each entry validates its own keys (pydantic), computes what it does to an input shape (output shape,
parameters, multiply-adds per image), names itself for summaries and reports, and builds its Keras
layer. recipe_layers.py adds the modern types; model.py joins both into the one list of types
(LAYER_CLASSES) from which the schema, shape checks, counts, the memory report and the builder derive.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fashion_cnn.config.schema import PositiveInt, Strict  # noqa: F401 (the layer types' base
from fashion_cnn.errors import ConfigError

ACTIVATIONS = ("relu", "elu", "gelu", "selu", "swish", "tanh", "sigmoid", "softmax", "linear")
# Weights batch normalization keeps per channel: scale and offset (trained), moving mean and variance.
BATCH_NORM_WEIGHTS = 4

Shape = tuple[int, ...]  # one image's shape, without the batch axis


def keras_layers() -> Any:
    """keras.layers, imported on first use: Keras takes seconds to import and most stages never build."""
    from keras import layers

    return layers


def spatial_output(size: int, window: int, stride: int, padding: str) -> int:
    """Output length along one axis: ceil(n / s) for "same", floor((n - f) / s) + 1 for "valid"."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1 if size >= window else 0


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


def window_output(shape: Shape, window: int, stride: int, padding: str, size_key: str) -> tuple[int, int]:
    """Height and width after a sliding window, or ConfigError (naming `size_key`) when nothing is left."""
    height, width = shape[0], shape[1]
    out_height, out_width = (spatial_output(side, window, stride, padding) for side in (height, width))
    if out_height <= 0 or out_width <= 0:
        raise ConfigError(
            f".{size_key} = {window}: a {padding!r} window of {window} with stride {stride} shrinks the "
            f"{height}x{width} input to {out_height}x{out_width}; use a smaller window, 'same' padding "
            f"or fewer pooling layers"
        )
    return out_height, out_width


class ConvFields(LayerEntry):
    """What every convolution entry has (not a layer type itself: subclasses narrow `type`)."""

    filters: PositiveInt
    """Output channels (feature maps)."""
    kernel_size: PositiveInt
    """Height and width of each kernel, in pixels."""
    strides: PositiveInt = 1
    """Step of the kernel across the image, in pixels."""
    padding: Literal["same", "valid"] = "same"
    """same: zero-padding keeps the size (at stride 1); valid: no padding, the image shrinks."""
    activation: Literal[ACTIVATIONS] = "relu"
    """The activation after the convolution (linear: none)."""
    needs_image: ClassVar[bool] = True


class ConvLayer(ConvFields):
    type: Literal["conv"]
    """conv: a 2-D convolution."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        height, width = window_output(shape, self.kernel_size, self.strides, self.padding, "kernel_size")
        inputs_per_output = self.kernel_size * self.kernel_size * shape[2]
        parameters = (inputs_per_output + 1) * self.filters
        return (height, width, self.filters), parameters, height * width * self.filters * inputs_per_output

    @property
    def summary(self) -> str:
        return f"conv{self.filters}x{self.kernel_size}"

    @property
    def description(self) -> str:
        size = self.kernel_size
        return f"conv {self.filters} {size}x{size}/{self.strides} {self.padding}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            activation=self.activation,
            name=name,
        )


class PoolLayer(LayerEntry):
    type: Literal["max_pool", "avg_pool"]
    """max_pool or avg_pool: the maximum or the mean of each window."""
    pool_size: PositiveInt = 2
    """Height and width of the pooling window, in pixels."""
    strides: PositiveInt | None = None
    """Step of the window; null: the pool size (Keras's default)."""
    padding: Literal["same", "valid"] = "valid"
    """valid: windows that fit only; same: pad so that every pixel is covered."""
    needs_image: ClassVar[bool] = True

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        stride = self.strides or self.pool_size
        height, width = window_output(shape, self.pool_size, stride, self.padding, "pool_size")
        return (height, width, shape[2]), 0, 0

    @property
    def summary(self) -> str:
        return f"{self.type.replace('_', '')}{self.pool_size}"

    @property
    def description(self) -> str:
        return f"{self.type.replace('_', ' ')} {self.pool_size}x{self.pool_size}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        pool_class = layers.MaxPooling2D if self.type == "max_pool" else layers.AveragePooling2D
        return pool_class(self.pool_size, strides=self.strides, padding=self.padding, name=name)


class FlattenLayer(LayerEntry):
    type: Literal["flatten"]
    """flatten: (height, width, channels) to one vector."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        return (math.prod(shape),), 0, 0

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.Flatten(name=name)


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
