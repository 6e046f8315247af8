"""The model as data: the layer list's schema, one shape-and-cost pass over it, and the Keras builder.

The union below is the one list of layer types (layers.py, spatial_layers.py); LAYER_CLASSES and
LAYER_TYPES derive from it. `infer_shapes` walks `model.layers` once, checking every shape;
validation, parameter counts, the summary, the memory report and the builder all read its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from fashion_cnn.config.schema import PositiveInt, Strict
from fashion_cnn.errors import ConfigError
from fashion_cnn.model.layers import (
    ActivationLayer,
    BatchNormLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    LayerEntry,
    Shape,
)
from fashion_cnn.model.spatial_layers import ConvLayer, PoolLayer, ResidualLayer, SeparableConvLayer

Layer = Annotated[
    ConvLayer
    | PoolLayer
    | FlattenLayer
    | DenseLayer
    | DropoutLayer
    | BatchNormLayer
    | ActivationLayer
    | GlobalAvgPoolLayer
    | SeparableConvLayer
    | ResidualLayer,
    Field(discriminator="type"),
]
# Every layer type by its `type` value, read off the union above (PoolLayer holds two).
LAYER_CLASSES: dict[str, type[LayerEntry]] = {
    value: layer_class
    for layer_class in Layer.__origin__.__args__
    for value in layer_class.model_fields["type"].annotation.__args__
}
LAYER_TYPES = tuple(LAYER_CLASSES)


class ModelConfig(Strict):
    """The architecture: a name and an ordered list of layers."""

    name: str
    """The preset's name (conf/model/<name>.yaml), shown in run names and reports."""
    input_shape: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]
    """Height, width and channels of one image."""
    layers: list[Layer] = Field(min_length=1)
    """The layers, input to output; each entry's keys are listed below by type."""


@dataclass(frozen=True)
class LayerShape:
    """What one layer turns its input into, computed before anything is built."""

    index: int
    layer: Layer
    input_shape: Shape  # without the batch axis
    output_shape: Shape
    parameters: int
    multiply_adds: int  # per image; convolutions and dense layers (the rest is cheap)

    @property
    def name(self) -> str:
        """The layer's name in the Keras model and the reports, e.g. '00_conv'."""
        return f"{self.index:02d}_{self.layer.type}"


def infer_shapes(model_config: ModelConfig) -> list[LayerShape]:
    """Each layer's output shape, parameters and multiply-adds, walking the list once; or ConfigError."""
    shape = tuple(model_config.input_shape)
    shapes = []
    for index, layer in enumerate(model_config.layers):
        where = f"model.layers.{index}"
        if layer.needs_image and len(shape) != 3:
            raise ConfigError(
                f"invalid model: {where}.type = {layer.type!r}: needs an image input "
                f"(height, width, channels) but gets shape {shape}; put it before the flatten layer"
            )
        try:
            output, parameters, multiply_adds = layer.output(shape)
        except ConfigError as error:
            raise ConfigError(f"invalid model: {where}{error}") from None
        shapes.append(LayerShape(index, layer, shape, output, parameters, multiply_adds))
        shape = output
    return shapes


def count_parameters(model_config: ModelConfig) -> int:
    """Total parameters as Keras counts them (batch norm's moving statistics included), from shapes alone."""
    return sum(item.parameters for item in infer_shapes(model_config))


def describe(model_config: ModelConfig) -> str:
    """A short human summary, e.g. 'conv64x7-maxpool2-...-dense10'."""
    return "-".join(layer.summary for layer in model_config.layers)


def build_model(model_config: ModelConfig):  # -> keras.Model (keras imported lazily: it is slow)
    """Build the Keras model the layer list describes, after checking every shape."""
    import keras

    shapes = infer_shapes(model_config)
    last = len(shapes) - 1
    model_layers = [keras.Input(shape=tuple(model_config.input_shape))]
    for item in shapes:
        model_layers.append(item.layer.build(item.input_shape, item.name, is_output=item.index == last))
    return keras.Sequential(model_layers, name=model_config.name)
