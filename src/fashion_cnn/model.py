"""Shape inference and the Keras builder for the layer list in params.yaml (the architecture is data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fashion_cnn.config import (
    ConfigError,
    ConvLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    Layer,
    ModelConfig,
    PoolLayer,
)


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
    needs_image = isinstance(layer, ConvLayer | PoolLayer)
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
    if isinstance(layer, ConvLayer | PoolLayer):
        height, width, channels = shape
        window = layer.kernel_size if isinstance(layer, ConvLayer) else layer.pool_size
        stride = layer.strides or window
        size_key = "kernel_size" if isinstance(layer, ConvLayer) else "pool_size"
        out_height, out_width = (
            spatial_output(side, window, stride, layer.padding) for side in (height, width)
        )
        if out_height <= 0 or out_width <= 0:
            raise ConfigError(
                f"invalid model: {where}.{size_key} = {window}: a {layer.padding!r} window of "
                f"{window} with stride {stride} shrinks the {height}x{width} input to "
                f"{out_height}x{out_width}; use a smaller window, 'same' padding or fewer "
                f"pooling layers"
            )
        if isinstance(layer, ConvLayer):
            parameters = (window * window * channels + 1) * layer.filters
            return (out_height, out_width, layer.filters), parameters
        return (out_height, out_width, channels), 0
    if isinstance(layer, FlattenLayer):
        return (math.prod(shape),), 0
    if isinstance(layer, DenseLayer):
        return (layer.units,), (shape[0] + 1) * layer.units
    if isinstance(layer, DropoutLayer):
        return shape, 0
    raise ConfigError(f"invalid model: {where}.type = {layer.type!r}: not supported")


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
    """Total trainable parameters, from shape inference alone."""
    return sum(item.parameters for item in infer_shapes(model_config))


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
        else:
            parts.append(layer.type)
    return "-".join(parts)


def build_model(model_config: ModelConfig):  # -> keras.Model (keras imported lazily: it is slow)
    """Build the Keras model the layer list describes, after checking every shape."""
    import keras
    from keras import layers

    infer_shapes(model_config)
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
    return keras.Sequential(model_layers, name=model_config.name)
