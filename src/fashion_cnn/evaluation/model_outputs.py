"""What the trained model computed on the test split, kept for the figures of what it learned.

The evaluate stage runs the model once and writes data/evaluate/model_outputs.npz: every test image's
class probabilities, each conv layer's outputs for one test image per class, the first conv layer's
kernel and the SHA-256 of the model file they came from. model_figures draws from these arrays, so it
neither loads the model again nor imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion_cnn.data.idx import NUM_CLASSES
from fashion_cnn.data.splits import Split, load_npz, save_npz
from fashion_cnn.errors import DataError
from fashion_cnn.training import trained_model
from fashion_cnn.utils import records

REBUILD_HINT = "restore it with `dvc checkout data/evaluate` or rebuild it with `dvc repro evaluate`"
FIXED_KEYS = ("probabilities", "class_indices", "conv_names", "first_conv_kernel", "model_sha256")


@dataclass(frozen=True)
class ModelOutputs:
    """The arrays model_figures draws (feature_maps[i] belongs to conv layer conv_names[i])."""

    probabilities: np.ndarray  # (test images, 10) float32
    class_indices: np.ndarray  # (classes present,) test-split indices, the first image of each class
    conv_names: list[str]
    first_conv_kernel: np.ndarray  # (height, width, input channels, filters); empty without conv layers
    feature_maps: list[np.ndarray]  # each (classes present, height, width, filters)
    model_sha256: str


def one_image_per_class(labels: np.ndarray) -> np.ndarray:
    """The index of the first image of each class present, in class order."""
    return np.array([int(np.argmax(labels == label)) for label in np.unique(labels)], dtype=np.int64)


def conv_layers(model: Any) -> list[Any]:
    """The model's Conv2D layers, input to output."""
    from keras import layers

    return [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]


def conv_outputs(model: Any, images: np.ndarray) -> list[np.ndarray]:
    """Each conv layer's output (count, height, width, filters), running the layers in inference mode."""
    import keras

    outputs, activations = [], images
    for layer in model.layers:
        activations = layer(activations, training=False)
        if isinstance(layer, keras.layers.Conv2D):
            outputs.append(np.asarray(keras.ops.convert_to_numpy(activations), dtype=np.float32))
    return outputs


def compute(model: Any, test: Split, probabilities: np.ndarray, model_sha256: str) -> ModelOutputs:
    """What model_figures needs of `model` (a keras.Model) on the test split, as arrays."""
    import keras

    convolutions = conv_layers(model)
    class_indices = one_image_per_class(test.labels)
    kernel = np.zeros((0, 0, 0, 0), np.float32)
    if convolutions:
        kernel = np.asarray(keras.ops.convert_to_numpy(convolutions[0].kernel), dtype=np.float32)
    return ModelOutputs(
        probabilities=np.asarray(probabilities, dtype=np.float32),
        class_indices=class_indices,
        conv_names=[layer.name for layer in convolutions],
        first_conv_kernel=kernel,
        feature_maps=conv_outputs(model, test.images[class_indices]) if convolutions else [],
        model_sha256=model_sha256,
    )


def write(path: Path, outputs: ModelOutputs) -> None:
    """Save `outputs` as one .npz, atomically."""
    save_npz(
        path,
        probabilities=outputs.probabilities,
        class_indices=outputs.class_indices,
        conv_names=np.array(outputs.conv_names, dtype=np.str_),
        first_conv_kernel=outputs.first_conv_kernel,
        model_sha256=np.array(outputs.model_sha256, dtype=np.str_),
        **{f"feature_maps_{index}": maps for index, maps in enumerate(outputs.feature_maps)},
    )


def read(path: Path, test: Split, model_file: Path) -> ModelOutputs:
    """The arrays evaluate wrote, checked against the test split and the model file they describe."""
    arrays = load_npz(path, FIXED_KEYS, REBUILD_HINT)
    conv_names = [str(name) for name in arrays["conv_names"].reshape(-1)]
    maps_keys = tuple(f"feature_maps_{index}" for index in range(len(conv_names)))
    feature_maps = list(load_npz(path, maps_keys, REBUILD_HINT).values())
    probabilities, class_indices = arrays["probabilities"], arrays["class_indices"]
    kernel = arrays["first_conv_kernel"]

    def wrong(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; {REBUILD_HINT}")

    if probabilities.dtype != np.float32 or probabilities.shape != (len(test.labels), NUM_CLASSES):
        raise wrong(
            f"probabilities must be float32 of shape ({len(test.labels)}, {NUM_CLASSES}) for the "
            f"{len(test.labels):,} test images, got {probabilities.dtype} {probabilities.shape}"
        )
    if class_indices.dtype.kind not in "iu" or class_indices.ndim != 1:
        raise wrong(f"class_indices must be 1-D integers, got {class_indices.dtype} {class_indices.shape}")
    if class_indices.size and (class_indices.min() < 0 or class_indices.max() >= len(test.labels)):
        raise wrong(f"class_indices must index the {len(test.labels):,} test images")
    if kernel.dtype != np.float32 or kernel.ndim != 4:
        raise wrong(f"first_conv_kernel must be a 4-D float32 array, got {kernel.dtype} {kernel.shape}")
    for name, maps in zip(conv_names, feature_maps, strict=True):
        if maps.dtype != np.float32 or maps.ndim != 4 or maps.shape[0] != len(class_indices):
            raise wrong(
                f"the feature maps of {name} must be float32 of shape ({len(class_indices)}, height, "
                f"width, filters), got {maps.dtype} {maps.shape}"
            )
    records.check_file(model_file, trained_model.REBUILD_HINT)
    recorded, actual = str(arrays["model_sha256"]), records.sha256(model_file)
    if recorded != actual:
        raise wrong(
            f"computed by a model with SHA-256 {recorded[:12]}..., not {model_file} ({actual[:12]}...): "
            f"the two files are of different runs"
        )
    return ModelOutputs(probabilities, class_indices, conv_names, kernel, feature_maps, recorded)
