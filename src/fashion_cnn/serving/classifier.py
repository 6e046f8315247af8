"""The trained model as a classifier of raw 28x28 grey images: one path for predict and serve.

The model is loaded by trained_model.load_model (which refuses a file that carries code, loads in Keras
safe mode and checks that it takes (28, 28, 1) grey levels and gives 10 scores). It carries the
training split's standardization itself (model/standardization.py): images go in as they are, 0..255.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.idx import IMAGE_SIDE
from fashion_cnn.training import trained_model
from fashion_cnn.utils import records

# Images per forward pass: bounds memory for long lists of images.
BATCH_SIZE = 256
REBUILD_HINT = trained_model.REBUILD_HINT


def as_batch(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(count, 28, 28) grey levels 0..255 as the model's input, (count, 28, 28, 1) float32."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 3 or batch.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"images must have shape (count, 28, 28), got {batch.shape}")
    return batch[..., np.newaxis]


def eager_forward(model: Any) -> Callable[[np.ndarray], Any]:
    """The model called directly, (count, 28, 28, 1) -> (count, 10): no model.predict overhead."""
    return lambda batch: model(batch, training=False)


def probabilities_of(forward: Callable[[np.ndarray], Any], batch: np.ndarray) -> np.ndarray:
    """(count, 10) float64 class probabilities of images (count, 28, 28, 1) of grey levels 0..255."""
    import keras

    outputs = [
        keras.ops.convert_to_numpy(forward(batch[start : start + BATCH_SIZE]))
        for start in range(0, len(batch), BATCH_SIZE)
    ]
    probabilities = np.concatenate(outputs).astype(np.float64)  # (count, 10)
    # A model whose last layer is not a softmax gives logits: turn them into probabilities.
    if (probabilities < 0).any() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        exponentials = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
        probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def top_classes(probabilities: np.ndarray, top_k: int = 3) -> list[list[dict[str, Any]]]:
    """The top-k classes of each row of (count, 10) probabilities, most probable first."""
    ranking = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        [
            {"class": CLASS_NAMES[index], "index": int(index), "probability": float(row[index])}
            for index in top
        ]
        for row, top in zip(probabilities, ranking, strict=True)
    ]


def predict(model: Any, batch: np.ndarray, top_k: int = 3) -> list[list[dict[str, Any]]]:
    """The top-k classes of each image (count, 28, 28, 1) of grey levels 0..255, most probable first."""
    if len(batch) == 0:
        return []
    return top_classes(probabilities_of(eager_forward(model), batch), top_k)


@dataclass(frozen=True)
class Classifier:
    """A checked model of raw pixels and where it was loaded from."""

    model_path: Path
    model: Any  # keras.Model taking (count, 28, 28, 1) grey levels 0..255

    def probabilities(
        self, images: np.ndarray, forward: Callable[[np.ndarray], Any] | None = None
    ) -> np.ndarray:
        """(count, 10) probabilities of raw (count, 28, 28) images of grey levels 0..255.

        `forward` runs the model on (count, 28, 28, 1) batches (default: the model called eagerly).
        """
        return probabilities_of(forward or eager_forward(self.model), as_batch(images))

    def classify(self, images: np.ndarray, top_k: int = 3) -> list[list[dict[str, Any]]]:
        """The top-k classes of raw (count, 28, 28) images of grey levels 0..255."""
        return predict(self.model, as_batch(images), top_k)


def load_classifier(model_path: Path) -> Classifier:
    """The checked model, or a DataError naming the file and what is wrong with it."""
    records.check_file(model_path, REBUILD_HINT)
    # No code from the file, safe mode, and a model that takes (28, 28, 1) grey levels and gives 10 scores.
    return Classifier(model_path, trained_model.load_model(model_path))
