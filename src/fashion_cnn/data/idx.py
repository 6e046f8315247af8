"""Reading and checking the IDX files Fashion-MNIST ships in (LeCun's MNIST format)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from fashion_cnn.errors import DataError

# Magic number = 0x0000 (two zero bytes), 0x08 (unsigned byte data), then the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SIDE = 28
NUM_CLASSES = 10
# No raw file may decompress to more than this: the largest, train-images-idx3-ubyte, is 47,040,016
# bytes, and a gzip bomb (1 GB of zeros is a 1 MB .gz) must stop here rather than fill memory.
MAX_IDX_BYTES = 64 << 20
# Compressed bytes given to zlib at a time, and the most it returns per call.
GUNZIP_CHUNK_BYTES = 1 << 20
# zlib's wbits for the gzip format only (16 + the largest window), as gzip.decompress reads.
GZIP_WBITS = 16 + zlib.MAX_WBITS


def gunzip(data: bytes, name: str, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Decompress a .gz payload of at most `max_bytes`, naming the file when it is truncated, not
    gzip at all, or decompresses to more (a gzip bomb stops there instead of filling memory)."""
    parts: list[bytes] = []
    size = 0
    remaining = memoryview(data)
    pending: bytes | memoryview = b""
    decompressor = zlib.decompressobj(GZIP_WBITS)
    try:
        while True:
            if not pending:
                pending, remaining = remaining[:GUNZIP_CHUNK_BYTES], remaining[GUNZIP_CHUNK_BYTES:]
            # At most one chunk out per call, and never more than one byte past the cap.
            output = decompressor.decompress(pending, min(GUNZIP_CHUNK_BYTES, max_bytes - size + 1))
            pending = decompressor.unconsumed_tail
            size += len(output)
            if size > max_bytes:
                raise DataError(
                    f"{name}: decompresses to more than {max_bytes:,} bytes, more than this file can "
                    f"hold (a corrupt file or a gzip bomb); the decompression was stopped there"
                )
            parts.append(output)
            if decompressor.eof:
                # gzip allows several members one after another, and zero bytes after the last as
                # padding; gzip.decompress reads both.
                pending = decompressor.unused_data
                if not pending.strip(b"\0") and not bytes(remaining).strip(b"\0"):
                    return b"".join(parts)
                decompressor = zlib.decompressobj(GZIP_WBITS)
            elif not output and not pending and not remaining:
                raise DataError(f"{name}: truncated gzip (the download or copy was cut short)")
    except zlib.error as error:
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
