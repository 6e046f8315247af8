"""Shape inference, parameter counts and bad-architecture errors of the layer-list builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fashion_cnn.model import architecture
from fashion_cnn.model.architecture import ModelConfig
from fashion_cnn.training.config import ProjectConfig

ROOT = Path(__file__).resolve().parents[1]
SEED_LAYER_TYPES = [
    "conv", "max_pool", "conv", "conv", "max_pool", "conv", "conv", "max_pool",
    "flatten", "dense", "dropout", "dense", "dropout", "dense",
]  # fmt: skip


def params() -> dict:
    """The committed params.yaml as a plain dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def model_config(layers: list[dict] | None = None, preset: str | None = None) -> ModelConfig:
    """The default model from params.yaml, a preset from conf/model/, or custom layers."""
    raw = params()
    if preset:
        raw["model"] = yaml.safe_load((ROOT / "conf" / "model" / f"{preset}.yaml").read_text())
    if layers is not None:
        raw["model"]["layers"] = layers
    return ProjectConfig.from_params(raw).model


def test_default_model_is_the_seed_cnn_with_1413834_parameters():
    default = model_config()
    assert [layer.type for layer in default.layers] == SEED_LAYER_TYPES
    assert architecture.count_parameters(default) == 1_413_834
    keras_model = architecture.build_model(default)
    assert keras_model.count_params() == 1_413_834
    assert [type(layer).__name__ for layer in keras_model.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "Conv2D", "MaxPooling2D", "Conv2D", "Conv2D",
        "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense",
    ]  # fmt: skip
    assert keras_model.layers[0].kernel_size == (7, 7)
    assert keras_model.layers[0].padding == "same"


def test_inferred_shapes_match_keras():
    default = model_config()
    inferred = [item.output_shape for item in architecture.infer_shapes(default)]
    keras_model = architecture.build_model(default)
    assert inferred == [tuple(layer.output.shape[1:]) for layer in keras_model.layers]
    assert inferred[0] == (28, 28, 64)
    assert inferred[7] == (3, 3, 256)
    assert inferred[8] == (2304,)


@pytest.mark.parametrize("preset", ["seed_cnn", "lenet5", "small_cnn"])
def test_presets_build_with_the_inferred_parameter_count(preset):
    preset_config = model_config(preset=preset)
    assert architecture.build_model(preset_config).count_params() == architecture.count_parameters(
        preset_config
    )


def test_lenet5_has_its_classic_shapes():
    shapes = [item.output_shape for item in architecture.infer_shapes(model_config(preset="lenet5"))]
    assert shapes[:4] == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16)]
