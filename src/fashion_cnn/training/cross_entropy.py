"""Plain cross-entropy of predicted probabilities: the one loss reported for validation and test.

Training logs it as `cross_entropy` / `val_cross_entropy` beside Keras's `loss` (the training
objective, with label smoothing when on), and evaluate computes the test loss with the same function,
so validation and test losses are one quantity. Probabilities are clipped at EPSILON, so one
confidently wrong image costs at most -log(EPSILON) = 16.1, whatever the logits were.
"""

from __future__ import annotations

import keras
from keras import ops

# Smallest probability taken for the true class (Keras's own backend epsilon).
EPSILON = 1e-7
# The metric's name in Keras's logs and the history.
NAME = "cross_entropy"


def per_image(labels, probabilities):  # (count,) class indices or (count, 10) one-hot -> (count,)
    """-log p(true class) for each image, from integer labels or one-hot rows."""
    probabilities = ops.clip(ops.convert_to_tensor(probabilities, "float32"), EPSILON, 1.0)  # (count, 10)
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 2 and labels.shape[-1] == probabilities.shape[-1]:
        return -ops.sum(ops.cast(labels, "float32") * ops.log(probabilities), axis=-1)
    indices = ops.reshape(ops.cast(labels, "int32"), (-1, 1))  # (count, 1)
    return -ops.log(ops.take_along_axis(probabilities, indices, axis=-1)[:, 0])


def metric() -> keras.metrics.Metric:
    """The Keras metric `cross_entropy` (val_cross_entropy on the validation split)."""
    return keras.metrics.MeanMetricWrapper(per_image, name=NAME)


def mean(labels, probabilities) -> float:
    """The mean over all images, as evaluate reports it."""
    return float(ops.convert_to_numpy(ops.mean(per_image(labels, probabilities))))
