"""The layer types beyond the seed's CNN, for modern small CNNs: batch norm, a bare activation,
global average pooling, depthwise-separable convolution and the ResNet basic block (see layers.py)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from fashion_cnn.model.layers import (
    ACTIVATIONS,
    BATCH_NORM_WEIGHTS,
    ConvFields,
    LayerEntry,
    PositiveInt,
    Shape,
    keras_layers,
    window_output,
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
