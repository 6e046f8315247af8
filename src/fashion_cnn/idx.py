"""Reading and checking the IDX files Fashion-MNIST ships in (LeCun's MNIST format)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fashion_cnn.errors import DataError

# Magic number = 0x0000 (two zero bytes), 0x08 (unsigned byte data), then the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SIDE = 28
NUM_CLASSES = 10


def gunzip(data: bytes, name: str) -> bytes:
    """Decompress a .gz payload, naming the file when it is truncated or not gzip at all."""
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(f"{name}: truncated gzip (the download or copy was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{name}: not a valid gzip file ({error})") from None


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Parse raw IDX bytes into a uint8 array of shape (count,) or (count, 28, 28)."""
    if len(data) < 8:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header")
    magic = int.from_bytes(data[0:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(
            f"{name}: wrong IDX magic number 0x{magic:08x} "
            f"(expected 0x{IMAGES_MAGIC:08x} for images or 0x{LABELS_MAGIC:08x} for labels)"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))
    expected = header_size + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{name}: header says shape {dims} ({expected} bytes) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def load_images(path: Path) -> np.ndarray:
    """Load a gzipped IDX image file: (count, 28, 28) uint8."""
    images = parse_idx(gunzip(path.read_bytes(), path.name), path.name)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path.name}: expected images of shape (count, 28, 28), got {images.shape}")
    return images


def load_labels(path: Path) -> np.ndarray:
    """Load a gzipped IDX label file: (count,) uint8 with values 0..9."""
    labels = parse_idx(gunzip(path.read_bytes(), path.name), path.name)
    if labels.ndim != 1:
        raise DataError(f"{path.name}: expected a 1-D label file, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{path.name}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}"
        )
    return labels


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (the inverse of parse_idx; used to build test data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x00000800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + array.tobytes()
