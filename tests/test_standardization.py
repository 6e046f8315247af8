"""The saved model carries the training split's standardization (model/standardization.py): it takes raw
grey levels, computes what the trained layers compute on standardized images, and loads as stock Keras.
A model without it is refused by the loader (tests/test_serve.py)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from fashion_cnn.model import architecture, artifact, standardization
from fashion_cnn.training import trained_model


@pytest.fixture(scope="module")
def statistics() -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std like prepare's, (1, 28, 28) each; some std at the epsilon (black border)."""
    generator = np.random.default_rng(0)
    mean = generator.uniform(0, 120, (1, 28, 28)).astype(np.float32)
    std = generator.uniform(20, 100, (1, 28, 28)).astype(np.float32)
    std[0, 0, :4] = 1e-7
    return mean, std


def raw_pixels(count: int) -> np.ndarray:
    """(count, 28, 28, 1) float32 grey levels 0..255, black where the std is the epsilon."""
    pixels = np.random.default_rng(1).integers(0, 256, (count, 28, 28, 1)).astype(np.float32)
    pixels[:, 0, :4] = 0
    return pixels


def test_the_model_on_raw_pixels_equals_the_layers_on_standardized_images(
    make_config, statistics: tuple[np.ndarray, np.ndarray]
) -> None:
    import keras

    mean, std = statistics
    keras.utils.set_random_seed(0)
    layers_model = architecture.build_model(make_config("model=small_cnn").model)
    model = standardization.with_standardization(layers_model, mean, std)
    pixels = raw_pixels(16)
    standardized = ((pixels[..., 0] - mean) / std)[..., np.newaxis]
    expected = keras.ops.convert_to_numpy(layers_model(standardized, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(pixels, training=False)), expected, atol=1e-6)
    # Same name and parameters as the trained model (the statistics are constants, not weights), so
    # load_model's comparison with config.yaml holds; the first layer is the standardization.
    assert (model.name, model.count_params()) == (layers_model.name, layers_model.count_params())
    assert standardization.takes_raw_pixels(model) and not standardization.takes_raw_pixels(layers_model)
    assert model.layers[0].dtype_policy.name == "float32"


def test_saved_with_its_statistics_it_loads_in_safe_mode_and_answers_the_same(
    make_config, statistics: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import keras

    mean, std = statistics
    model = standardization.with_standardization(
        architecture.build_model(make_config("model=small_cnn").model), mean, std
    )
    path = tmp_path / "model.keras"
    model.save(path)
    # A stock Keras layer with its statistics in config.json: no code for the artifact check to refuse.
    artifact.check_artifact(path, "rebuild")
    with zipfile.ZipFile(path) as archive:
        assert b'"Normalization"' in archive.read("config.json")
    loaded = trained_model.load_model(path)
    pixels = raw_pixels(8)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(pixels, training=False)),
        keras.ops.convert_to_numpy(model(pixels, training=False)),
        atol=1e-6,
    )
