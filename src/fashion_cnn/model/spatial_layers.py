"""The layer types that slide a window over the image: convolution, depthwise-separable
convolution, max and average pooling, and the ResNet basic block (see layers.py for what every type
provides)."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fashion_cnn.config.schema import PositiveInt
from fashion_cnn.errors import ConfigError
from fashion_cnn.model.layers import ACTIVATIONS, BATCH_NORM_WEIGHTS, LayerEntry, Shape, keras_layers


def spatial_output(size: int, window: int, stride: int, padding: str) -> int:
    """Output length along one axis: ceil(n / s) for "same", floor((n - f) / s) + 1 for "valid"."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1 if size >= window else 0


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


class SeparableConvLayer(ConvFields):
    """Depthwise-separable convolution: one kernel per input channel, then a 1x1 conv mixing channels."""

    type: Literal["separable_conv"]
    """separable_conv: a depthwise-separable convolution."""
    depth_multiplier: PositiveInt = 1
    """Depthwise outputs per input channel."""

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        height, width = window_output(shape, self.kernel_size, self.strides, self.padding, "kernel_size")
        window, depthwise_channels = self.kernel_size * self.kernel_size, shape[2] * self.depth_multiplier
        parameters = window * depthwise_channels + (depthwise_channels + 1) * self.filters
        multiply_adds = height * width * depthwise_channels * (window + self.filters)
        return (height, width, self.filters), parameters, multiply_adds

    @property
    def summary(self) -> str:
        return f"sepconv{self.filters}x{self.kernel_size}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        layers = keras_layers()
        return layers.SeparableConv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            depth_multiplier=self.depth_multiplier,
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


class ResidualLayer(LayerEntry):
    """A ResNet basic block: conv-bn-activation-conv-bn plus a shortcut, then the activation.

    The shortcut is the input itself, or a 1x1 conv with batch norm when `strides` or `filters`
    change the shape. Convolutions use "same" padding and no bias (batch norm's offset replaces it).
    """

    type: Literal["residual"]
    """residual: a ResNet basic block."""
    filters: PositiveInt
    """Output channels of the block's convolutions."""
    kernel_size: PositiveInt = 3
    """Height and width of the block's kernels, in pixels."""
    strides: PositiveInt = 1
    """Step of the first convolution (2 halves the resolution)."""
    activation: Literal[ACTIVATIONS] = "relu"
    """The activation inside and after the block."""
    batch_norm_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    """Momentum of the block's batch norms (see batch_norm)."""
    needs_image: ClassVar[bool] = True

    def needs_projection(self, channels: int) -> bool:
        """The shortcut needs a 1x1 conv when the block changes the resolution or the channel count."""
        return self.strides != 1 or channels != self.filters

    def output(self, shape: Shape) -> tuple[Shape, int, int]:
        height, width = window_output(shape, self.kernel_size, self.strides, "same", "kernel_size")
        channels, filters, window = shape[2], self.filters, self.kernel_size * self.kernel_size
        # Two bias-free convolutions, each followed by batch norm.
        parameters = window * (channels + filters) * filters + 2 * BATCH_NORM_WEIGHTS * filters
        multiply_adds = height * width * filters * window * (channels + filters)
        if self.needs_projection(channels):
            parameters += channels * filters + BATCH_NORM_WEIGHTS * filters
            multiply_adds += height * width * filters * channels
        return (height, width, filters), parameters, multiply_adds

    @property
    def summary(self) -> str:
        stride = f"s{self.strides}" if self.strides != 1 else ""
        return f"res{self.filters}x{self.kernel_size}{stride}"

    def build(self, input_shape: Shape, name: str, is_output: bool) -> Any:
        """The block as a small functional model of stock Keras layers (it loads in safe mode)."""
        import keras

        layers = keras_layers()

        def conv(filters: int, kernel_size: int, strides: int, part: str) -> Any:
            # No bias: the batch norm that follows adds its own offset.
            return layers.Conv2D(
                filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_{part}"
            )

        def batch_norm(part: str) -> Any:
            return layers.BatchNormalization(momentum=self.batch_norm_momentum, name=f"{name}_{part}")

        inputs = keras.Input(shape=input_shape)  # (batch, height, width, channels)
        path = batch_norm("bn1")(conv(self.filters, self.kernel_size, self.strides, "conv1")(inputs))
        path = layers.Activation(self.activation, name=f"{name}_act1")(path)
        path = batch_norm("bn2")(conv(self.filters, self.kernel_size, 1, "conv2")(path))
        shortcut = inputs
        if self.needs_projection(input_shape[-1]):
            shortcut = batch_norm("projection_bn")(conv(self.filters, 1, self.strides, "projection")(inputs))
        merged = layers.Add(name=f"{name}_add")([path, shortcut])
        outputs = layers.Activation(self.activation, name=f"{name}_act2")(merged)
        return keras.Model(inputs, outputs, name=name)
