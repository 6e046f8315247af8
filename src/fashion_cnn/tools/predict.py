"""Classify garment photos with the trained model: `python -m fashion_cnn.tools.predict IMAGE... [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_cnn import CLASS_NAMES, paths, trained_model
from fashion_cnn.data import STATS_FILE, load_standardization
from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.idx import IMAGE_SIDE

# A border brighter than mid-grey means a light background; Fashion-MNIST has light garments on black.
LIGHT_BACKGROUND_THRESHOLD = 127.5
# After the background is mapped to 0, pixels above this (of 255) count as garment when trimming.
FOREGROUND_THRESHOLD = 20.0
# Images per forward pass: bounds memory for long lists of files.
BATCH_SIZE = 256


def _read_grayscale(path: Path) -> np.ndarray:
    """Decode any image Pillow knows into (height, width) float32 grey levels 0..255."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # Phone photos store their rotation in EXIF.
            if image.mode.startswith("I"):
                # 16-bit greyscale: Pillow's convert("L") would clip it, so scale 0..65535 to 0..255.
                return np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0.0, 255.0)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # Transparent areas become white, a light background like a product photo's.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            return np.asarray(image.convert("L"), dtype=np.float32)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read (expected PNG or JPEG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DataError(f"{path}: cannot read image ({reason})") from None


def _trim_and_pad(pixels: np.ndarray) -> np.ndarray:
    """Crop to the garment's bounding box and centre it on a black square, as Fashion-MNIST does."""
    foreground = pixels > FOREGROUND_THRESHOLD
    rows, columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if rows.size:
        pixels = pixels[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = pixels.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = pixels
    return square


def load_image(path: Path) -> np.ndarray:
    """Read an image of any size or mode as a Fashion-MNIST image: (28, 28) float32, 0..255, garment light."""
    pixels = _read_grayscale(path)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    if border.mean() > LIGHT_BACKGROUND_THRESHOLD:
        pixels, background = 255.0 - pixels, 255.0 - background
    # Fashion-MNIST backgrounds are exactly 0: map the background level to 0 and keep 255 at 255.
    pixels = np.clip((pixels - background) * (255.0 / max(255.0 - background, 1.0)), 0.0, 255.0)
    square = Image.fromarray(_trim_and_pad(pixels.astype(np.float32)))  # mode "F": no rounding
    resized = square.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    # Lanczos rings slightly past the input range near sharp edges.
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)


def preprocess(images: Sequence[np.ndarray] | np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardize (count, 28, 28) images of 0..255 with the training statistics: (count, 28, 28, 1)."""
    batch = np.asarray(images, dtype=np.float32)
    expected = (IMAGE_SIDE, IMAGE_SIDE)
    if batch.ndim != 3 or batch.shape[1:] != expected:
        raise ValueError(f"images must have shape (count, 28, 28), got {batch.shape}")
    if mean.shape != (1, *expected) or std.shape != (1, *expected):
        raise DataError(
            f"{STATS_FILE}: mean and std must have shape (1, 28, 28), got {mean.shape} and {std.shape}"
        )
    return ((batch - mean) / std)[..., np.newaxis].astype(np.float32)  # (count, 28, 28, 1)


def predict(model: Any, batch: np.ndarray, top_k: int = 3) -> list[list[dict[str, Any]]]:
    """The top-k classes of each standardized image (count, 28, 28, 1), most probable first."""
    import keras

    if len(batch) == 0:
        return []
    outputs = [
        keras.ops.convert_to_numpy(model(batch[start : start + BATCH_SIZE], training=False))
        for start in range(0, len(batch), BATCH_SIZE)
    ]
    probabilities = np.concatenate(outputs).astype(np.float64)  # (count, 10)
    if probabilities.shape[1:] != (len(CLASS_NAMES),):
        raise DataError(
            f"the model outputs shape {probabilities.shape[1:]}, expected one score per class (10)"
        )
    # A model whose last layer is not a softmax gives logits: turn them into probabilities.
    if (probabilities < 0).any() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        exponentials = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
        probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
    ranking = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        [
            {"class": CLASS_NAMES[index], "index": int(index), "probability": float(row[index])}
            for index in top
        ]
        for row, top in zip(probabilities, ranking, strict=True)
    ]


def classify_files(
    image_paths: Sequence[Path], model_path: Path, prepared_dir: Path, top_k: int = 3
) -> list[dict[str, Any]]:
    """One result per file, in order: {"file", "predictions"} or {"file", "error"}."""
    stats_path = prepared_dir / STATS_FILE
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found (train it with `dvc repro`)")
    if not stats_path.is_file():
        raise DataError(f"{stats_path}: standardization statistics not found (make them with `dvc repro`)")
    mean, std = load_standardization(prepared_dir)
    results: list[dict[str, Any]] = []
    images: dict[int, np.ndarray] = {}  # position in image_paths -> (28, 28) pixels
    for position, path in enumerate(image_paths):
        try:
            images[position] = load_image(path)
            results.append({"file": str(path)})
        except DataError as error:
            results.append({"file": str(path), "error": str(error)})
    if images:
        batch = preprocess(list(images.values()), mean, std)
        predictions = predict(trained_model.load_model(model_path), batch, top_k)
        for position, top in zip(images, predictions, strict=True):
            results[position]["predictions"] = top
    return results


def _top_k(text: str) -> int:
    """argparse type for --top: an integer from 1 to the number of classes."""
    if not text.isdigit() or not 1 <= int(text) <= len(CLASS_NAMES):
        raise argparse.ArgumentTypeError(
            f"--top must be an integer from 1 to {len(CLASS_NAMES)}, got {text!r}"
        )
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: image files, output format, model and statistics locations."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.tools.predict",
        description="Classify PNG or JPEG photos of garments with the trained Fashion-MNIST model.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to classify")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--model", type=Path, help="the .keras model (default: data/model/model.keras)")
    parser.add_argument(
        "--prepared-dir",
        type=Path,
        help=f"folder holding {STATS_FILE}, the training statistics (default: data/prepared)",
    )
    parser.add_argument(
        "--top", type=_top_k, default=3, metavar="K", help="classes shown per image (default 3)"
    )
    return parser.parse_args(argv)


def format_text(result: dict[str, Any]) -> str:
    """A file's top classes as aligned lines: name, then each class and its probability."""
    width = max(len(name) for name in CLASS_NAMES)
    lines = [result["file"]]
    lines += [f"  {item['class']:<{width}}  {item['probability']:6.1%}" for item in result["predictions"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every image was classified, 1 when any failed or the model is missing."""
    args = parse_args(argv)
    try:
        model_path, prepared_dir = args.model, args.prepared_dir
        if model_path is None or prepared_dir is None:
            project = paths.project_paths()
            model_path = model_path or project.model_file
            prepared_dir = prepared_dir or project.prepared_dir
        results = classify_files(args.images, model_path, prepared_dir, args.top)
    except FileNotFoundError as error:
        print(f"error: {error}; or pass --model and --prepared-dir", file=sys.stderr)
        return 1
    except FashionCnnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for result in results:
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    elif any("predictions" in result for result in results):
        print("\n\n".join(format_text(result) for result in results if "predictions" in result))
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
