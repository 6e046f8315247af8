"""The model users take away: raw grey levels in, class probabilities out.

The layers train on standardized images, as the seed notebook's do. When training ends, they are put
behind a Keras `Normalization` layer that holds the training split's per-pixel mean and variance
(data/prepared/standardization.npz), so the saved model takes (count, 28, 28, 1) grey levels 0..255.
It is the only place the standardization is applied outside prepare: evaluate, predict, serve and
MLflow's loaders all feed the saved model raw pixels. The layer is a stock Keras layer whose statistics
are constants of its config, so the model file still carries no code and no extra weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LAYER_NAME = "standardization"


def with_standardization(layers_model: Any, mean: np.ndarray, std: np.ndarray) -> Any:  # keras.Model
    """The trained layers of `layers_model` (a keras.Sequential on standardized images) behind the
    standardization of `mean` and `std` (each (1, 28, 28)): a Sequential of the same name on raw pixels.

    The layers are shared, not copied: the result computes exactly what the trained model computes on
    (pixels - mean) / std, up to float32 rounding of sqrt(std ** 2).
    """
    import keras

    shape = tuple(layers_model.input_shape[1:])  # (28, 28, 1)
    normalization = keras.layers.Normalization(
        axis=(1, 2, 3),  # one mean and variance per pixel
        mean=np.asarray(mean, np.float32).reshape(shape),
        variance=np.square(np.asarray(std, np.float32)).reshape(shape),
        dtype="float32",  # grey levels up to 255: never in a mixed-precision policy's 16 bits
        name=LAYER_NAME,
    )
    return keras.Sequential(
        [keras.Input(shape=shape), normalization, *layers_model.layers], name=layers_model.name
    )


def takes_raw_pixels(model: Any) -> bool:
    """Whether `model` begins with the standardization layer (and so takes grey levels 0..255)."""
    import keras

    layers = getattr(model, "layers", [])
    return bool(layers) and isinstance(layers[0], keras.layers.Normalization) and layers[0].name == LAYER_NAME
