"""Shape inference and the Keras builder for the layer list in params.yaml (the architecture is data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fashion_cnn.config import (
    ActivationLayer,
    BatchNormLayer,
    ConfigError,
    ConvLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    Layer,
    ModelConfig,
    PoolLayer,
    ResidualLayer,
    SeparableConvLayer,
)

# Layers that slide over an image and need (height, width, channels) input.
IMAGE_LAYERS = (ConvLayer, PoolLayer, SeparableConvLayer, ResidualLayer, GlobalAvgPoolLayer)
# Weights batch normalization keeps per channel: scale and offset (trained), moving mean and variance.
BATCH_NORM_WEIGHTS = 4


@dataclass(frozen=True)
class LayerShape:
    """What one layer turns its input into, computed before anything is built."""

    index: int
    layer: Layer
    input_shape: tuple[int, ...]  # without the batch axis
    output_shape: tuple[int, ...]
    parameters: int


def spatial_output(size: int, window: int, stride: int, padding: str) -> int:
    """Output length along one axis: ceil(n / s) for "same", floor((n - f) / s) + 1 for "valid"."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1 if size >= window else 0


def _output_of(index: int, layer: Layer, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """(output shape, parameter count) of `layer` on an input of `shape`, or ConfigError."""
    where = f"model.layers.{index}"
    needs_image = isinstance(layer, IMAGE_LAYERS)
    if needs_image and len(shape) != 3:
        raise ConfigError(
            f"invalid model: {where}.type = {layer.type!r}: needs an image input "
            f"(height, width, channels) but gets shape {shape}; put it before the flatten layer"
        )
    if isinstance(layer, DenseLayer) and len(shape) != 1:
        raise ConfigError(
            f"invalid model: {where}.type = 'dense': needs a flat input but gets shape {shape}; "
            f"add a flatten layer before it"
        )
    if isinstance(layer, ConvLayer | PoolLayer | SeparableConvLayer | ResidualLayer):
        height, width, channels = shape
        window = layer.pool_size if isinstance(layer, PoolLayer) else layer.kernel_size
        stride = layer.strides or window
        size_key = "pool_size" if isinstance(layer, PoolLayer) else "kernel_size"
        padding = "same" if isinstance(layer, ResidualLayer) else layer.padding
        out_height, out_width = (spatial_output(side, window, stride, padding) for side in (height, width))
        if out_height <= 0 or out_width <= 0:
            raise ConfigError(
                f"invalid model: {where}.{size_key} = {window}: a {padding!r} window of "
                f"{window} with stride {stride} shrinks the {height}x{width} input to "
                f"{out_height}x{out_width}; use a smaller window, 'same' padding or fewer "
                f"pooling layers"
            )
        if isinstance(layer, PoolLayer):
            return (out_height, out_width, channels), 0
        return (out_height, out_width, layer.filters), _conv_parameters(layer, window, channels)
    if isinstance(layer, FlattenLayer):
        return (math.prod(shape),), 0
    if isinstance(layer, DenseLayer):
        return (layer.units,), (shape[0] + 1) * layer.units
    if isinstance(layer, DropoutLayer | ActivationLayer):
        return shape, 0
    if isinstance(layer, BatchNormLayer):
        return shape, BATCH_NORM_WEIGHTS * shape[-1]
    if isinstance(layer, GlobalAvgPoolLayer):
        return (shape[-1],), 0
    raise ConfigError(f"invalid model: {where}.type = {layer.type!r}: not supported")


def _conv_parameters(
    layer: ConvLayer | SeparableConvLayer | ResidualLayer, window: int, channels: int
) -> int:
    """Weights of a convolution-like layer with `channels` input channels (batch norm's included)."""
    if isinstance(layer, ConvLayer):
        return (window * window * channels + 1) * layer.filters
    if isinstance(layer, SeparableConvLayer):
        depthwise = window * window * channels * layer.depth_multiplier
        return depthwise + (channels * layer.depth_multiplier + 1) * layer.filters
    filters = layer.filters
    # Two bias-free convolutions, each followed by batch norm.
    block = window * window * (channels + filters) * filters + 2 * BATCH_NORM_WEIGHTS * filters
    if _residual_needs_projection(layer, channels):
        block += channels * filters + BATCH_NORM_WEIGHTS * filters
    return block


def _residual_needs_projection(layer: ResidualLayer, channels: int) -> bool:
    """The shortcut needs a 1x1 conv when the block changes the resolution or the channel count."""
    return layer.strides != 1 or channels != layer.filters


def infer_shapes(model_config: ModelConfig) -> list[LayerShape]:
    """Walk the layer list and compute each output shape and parameter count."""
    shape = tuple(model_config.input_shape)
    shapes = []
    for index, layer in enumerate(model_config.layers):
        output, parameters = _output_of(index, layer, shape)
        shapes.append(LayerShape(index, layer, shape, output, parameters))
        shape = output
    return shapes


def count_parameters(model_config: ModelConfig) -> int:
    """Total parameters as Keras counts them (batch norm's moving statistics included), from shapes alone."""
    return sum(item.parameters for item in infer_shapes(model_config))


def layer_multiply_adds(shape: LayerShape) -> int:
    """Multiply-adds of one layer for one image (convolutions and dense layers; the rest is cheap)."""
    layer = shape.layer
    if isinstance(layer, DenseLayer):
        return shape.input_shape[0] * layer.units
    if not isinstance(layer, ConvLayer | SeparableConvLayer | ResidualLayer):
        return 0
    channels = shape.input_shape[-1]
    out_height, out_width, filters = shape.output_shape
    window = layer.kernel_size * layer.kernel_size
    positions = out_height * out_width
    if isinstance(layer, ConvLayer):
        return positions * filters * window * channels
    if isinstance(layer, SeparableConvLayer):
        depthwise_channels = channels * layer.depth_multiplier
        return positions * depthwise_channels * (window + filters)
    total = positions * filters * window * (channels + filters)
    if _residual_needs_projection(layer, channels):
        total += positions * filters * channels
    return total


def describe(model_config: ModelConfig) -> str:
    """A short human summary, e.g. 'conv64x7-maxpool2-...-dense10'."""
    parts = []
    for layer in model_config.layers:
        if isinstance(layer, ConvLayer):
            parts.append(f"conv{layer.filters}x{layer.kernel_size}")
        elif isinstance(layer, PoolLayer):
            parts.append(f"{layer.type.replace('_', '')}{layer.pool_size}")
        elif isinstance(layer, DenseLayer):
            parts.append(f"dense{layer.units}")
        elif isinstance(layer, DropoutLayer):
            parts.append(f"drop{layer.rate:g}")
        elif isinstance(layer, SeparableConvLayer):
            parts.append(f"sepconv{layer.filters}x{layer.kernel_size}")
        elif isinstance(layer, ResidualLayer):
            stride = f"s{layer.strides}" if layer.strides != 1 else ""
            parts.append(f"res{layer.filters}x{layer.kernel_size}{stride}")
        elif isinstance(layer, BatchNormLayer):
            parts.append("bn")
        elif isinstance(layer, GlobalAvgPoolLayer):
            parts.append("gap")
        elif isinstance(layer, ActivationLayer):
            parts.append(layer.activation)
        else:
            parts.append(layer.type)
    return "-".join(parts)


def build_model(model_config: ModelConfig):  # -> keras.Model (keras imported lazily: it is slow)
    """Build the Keras model the layer list describes, after checking every shape."""
    import keras
    from keras import layers

    shapes = infer_shapes(model_config)
    model_layers = [keras.Input(shape=tuple(model_config.input_shape))]
    for index, layer in enumerate(model_config.layers):
        name = f"{index:02d}_{layer.type}"
        if isinstance(layer, ConvLayer):
            model_layers.append(
                layers.Conv2D(
                    layer.filters,
                    layer.kernel_size,
                    strides=layer.strides,
                    padding=layer.padding,
                    activation=layer.activation,
                    name=name,
                )
            )
        elif isinstance(layer, PoolLayer):
            pool_class = layers.MaxPooling2D if layer.type == "max_pool" else layers.AveragePooling2D
            model_layers.append(
                pool_class(layer.pool_size, strides=layer.strides, padding=layer.padding, name=name)
            )
        elif isinstance(layer, FlattenLayer):
            model_layers.append(layers.Flatten(name=name))
        elif isinstance(layer, DenseLayer):
            # The output layer stays float32 under mixed precision, for a stable softmax.
            is_output = index == len(model_config.layers) - 1
            model_layers.append(
                layers.Dense(
                    layer.units,
                    activation=layer.activation,
                    name=name,
                    dtype="float32" if is_output else None,
                )
            )
        elif isinstance(layer, DropoutLayer):
            model_layers.append(layers.Dropout(layer.rate, name=name))
        else:
            model_layers.append(build_recipe_layer(layer, shapes[index].input_shape, name))
    return keras.Sequential(model_layers, name=model_config.name)


def build_recipe_layer(layer: Layer, input_shape: tuple[int, ...], name: str):  # -> keras.Layer
    """The Keras layer of a batch_norm, activation, global_avg_pool, separable_conv or residual entry."""
    from keras import layers

    if isinstance(layer, BatchNormLayer):
        return layers.BatchNormalization(momentum=layer.momentum, name=name)
    if isinstance(layer, ActivationLayer):
        return layers.Activation(layer.activation, name=name)
    if isinstance(layer, GlobalAvgPoolLayer):
        return layers.GlobalAveragePooling2D(name=name)
    if isinstance(layer, SeparableConvLayer):
        return layers.SeparableConv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            depth_multiplier=layer.depth_multiplier,
            activation=layer.activation,
            name=name,
        )
    if isinstance(layer, ResidualLayer):
        return residual_block(layer, input_shape, name)
    raise ConfigError(f"invalid model: {name}: layer type {layer.type!r} is not supported")


def residual_block(layer: ResidualLayer, input_shape: tuple[int, ...], name: str):  # -> keras.Model
    """A ResNet basic block as a small functional model, so it is one entry of the Sequential model.

    Built from stock Keras layers only, so the saved model loads in safe mode without custom code.
    """
    import keras
    from keras import layers

    def conv(filters: int, kernel_size: int, strides: int, part: str):
        # No bias: the batch norm that follows adds its own offset.
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_{part}"
        )

    inputs = keras.Input(shape=input_shape)  # (batch, height, width, channels)
    path = conv(layer.filters, layer.kernel_size, layer.strides, "conv1")(inputs)
    path = layers.BatchNormalization(momentum=layer.batch_norm_momentum, name=f"{name}_bn1")(path)
    path = layers.Activation(layer.activation, name=f"{name}_act1")(path)
    path = conv(layer.filters, layer.kernel_size, 1, "conv2")(path)
    path = layers.BatchNormalization(momentum=layer.batch_norm_momentum, name=f"{name}_bn2")(path)
    shortcut = inputs
    if _residual_needs_projection(layer, input_shape[-1]):
        shortcut = conv(layer.filters, 1, layer.strides, "projection")(inputs)
        shortcut = layers.BatchNormalization(
            momentum=layer.batch_norm_momentum, name=f"{name}_projection_bn"
        )(shortcut)
    merged = layers.Add(name=f"{name}_add")([path, shortcut])
    outputs = layers.Activation(layer.activation, name=f"{name}_act2")(merged)
    return keras.Model(inputs, outputs, name=name)
