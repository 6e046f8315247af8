"""The model's forward pass compiled once, for a server answering many small requests.

Calling a Keras model eagerly costs about 8 ms per call on a 2-core CPU whatever the batch size
(small_cnn, one image); the same call traced once into a `tf.function` with a fixed input signature
costs about 1 ms (Keras recommends calling the model, not `model.predict`, for small batches). The
numbers are the same kernels' (checked against the eager call in tests/test_serve.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fashion_cnn.data.idx import IMAGE_SIDE
from fashion_cnn.serving import classifier


def compiled_forward(model: Any) -> Callable[[np.ndarray], Any]:
    """model(batch, training=False) as one traced graph for any batch of (count, 28, 28, 1) float32.

    Falls back to the eager call on a Keras backend other than TensorFlow.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return classifier.eager_forward(model)
    import tensorflow as tf

    # One signature with an open batch dimension: traced once, never again for another batch size.
    signature = [tf.TensorSpec((None, IMAGE_SIDE, IMAGE_SIDE, 1), tf.float32)]

    def forward(batch):  # (count, 28, 28, 1) -> (count, 10)
        return model(batch, training=False)

    return tf.function(forward, input_signature=signature, autograph=False)
