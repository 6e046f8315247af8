"""The HTTP protocol of the model server: what a request body must hold, and the one-line refusals.

POST /invocations takes {"inputs": [image, ...], "top": 3}: an image is 28 rows of 28 raw grey levels
0..255 (one image without the outer list works too; "top" is optional, 1..10).
"""

from __future__ import annotations

import json

import numpy as np

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.idx import IMAGE_SIDE

# Images per request, and bytes per request body: 1,024 images of 784 values written with full
# float precision take about 16 MB of JSON.
MAX_IMAGES = 1024
MAX_BODY_BYTES = 20 * 2**20
# A larger body is read and dropped before the 413 answer (a fraction of a second on 127.0.0.1); one
# larger still is refused unread, and the client may see the connection reset instead.
DRAIN_BYTES = 256 * 2**20
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
DEFAULT_TOP = 3


class RequestError(Exception):
    """A request the server refuses: the HTTP status and one line saying what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> tuple[np.ndarray, int]:
    """The images (count, 28, 28) float32 of 0..255 and the top-k asked for in a JSON body."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"the body is not JSON ({error})") from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise RequestError(400, 'the body must be a JSON object {"inputs": [image, ...]}')
    unknown = sorted(set(document) - {"inputs", "top"})
    if unknown:
        raise RequestError(400, f"unknown keys {unknown}; the body takes 'inputs' and optionally 'top'")
    top = document.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(CLASS_NAMES):
        raise RequestError(400, f"'top' must be an integer from 1 to {len(CLASS_NAMES)}, got {top!r}")
    try:
        images = np.asarray(document["inputs"])
    except ValueError:  # Rows or images of different lengths.
        images = np.asarray(None)
    expected = f"one image {IMAGE_SHAPE} or a list of them (count, {IMAGE_SIDE}, {IMAGE_SIDE}) of grey levels"
    if images.dtype == object:
        problem = "is not a grid of numbers (rows of different lengths, or nulls)"
        raise RequestError(400, f"'inputs' {problem}; expected {expected}")
    if images.shape[-2:] != IMAGE_SHAPE or images.ndim not in (2, 3):
        raise RequestError(400, f"'inputs' has shape {images.shape}; expected {expected}")
    if images.dtype.kind not in "iuf":
        raise RequestError(400, f"'inputs' must hold numbers (grey levels 0-255), not {images.dtype} values")
    images = images.reshape(-1, *IMAGE_SHAPE).astype(np.float32)  # (count, 28, 28)
    if len(images) == 0:
        raise RequestError(400, f"'inputs' holds no image; expected {expected}")
    if len(images) > MAX_IMAGES:
        raise RequestError(400, f"'inputs' holds {len(images)} images; at most {MAX_IMAGES} per request")
    outside = ~np.isfinite(images) | (images < 0) | (images > 255)
    if outside.any():
        position = tuple(int(index) for index in np.argwhere(outside)[0])
        raise RequestError(
            400,
            f"pixel values must be 0-255 (raw grey levels, not standardized); "
            f"image {position[0]} row {position[1]} column {position[2]} is {images[position]}",
        )
    return images, top
