"""Classify garment photos with the trained model: `python -m fashion_cnn.tools.predict IMAGE... [--json]`.

Each file is read as a Fashion-MNIST image (28x28 grey, garment light on black); the model is loaded
and used through fashion_cnn.serving.classifier, the same path as `make serve`, which refuses a model that
carries code. `--model` takes a .keras file (default data/model/model.keras) or a registered model,
`models:/<name>@<alias>` or `models:/<name>/<version>` (fashion_cnn.tracking.registry).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.idx import IMAGE_SIDE
from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.serving import classifier
from fashion_cnn.tracking import registry
from fashion_cnn.utils import paths

# A border brighter than mid-grey means a light background; Fashion-MNIST has light garments on black.
LIGHT_BACKGROUND_THRESHOLD = 127.5
# After the background is mapped to 0, pixels above this (of 255) count as garment when trimming.
FOREGROUND_THRESHOLD = 20.0
# Larger images are refused from their header, before any decoding: 50 megapixels is an 8,000 x 6,000
# photo; a 20,000 x 20,000 PNG would take 1.6 GB as grey levels.
MAX_PIXELS = 50_000_000


def _too_large(path: Path, pixels: int | str) -> DataError:
    """The one line for an image over MAX_PIXELS."""
    return DataError(
        f"{path}: image too large ({pixels} pixels, at most {MAX_PIXELS:,} are read); scale it down first"
    )


def _read_grayscale(path: Path) -> np.ndarray:
    """Decode any image Pillow knows into (height, width) float32 grey levels 0..255; colour becomes grey."""
    try:
        # Pillow warns from 89 megapixels and refuses from 179: both are a refusal here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)  # Reads the header only.
        with opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise _too_large(path, f"{width:,} x {height:,} = {width * height:,}")
            image = ImageOps.exif_transpose(opened)  # Phone photos store their rotation in EXIF.
            if image.mode.startswith("I"):
                # 16-bit greyscale: Pillow's convert("L") would clip it, so scale 0..65535 to 0..255.
                return np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0.0, 255.0)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # Transparent areas become white, a light background like a product photo's.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            # Colour becomes its luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), as Fashion-MNIST's grey.
            return np.asarray(image.convert("L"), dtype=np.float32)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read (expected PNG or JPEG)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        counted = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, f"{int(counted[1]):,}" if counted else "over 89 million") from None
    except (OSError, SyntaxError, ValueError) as error:
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


def classify_files(image_paths: Sequence[Path], model_path: Path, top_k: int = 3) -> list[dict[str, Any]]:
    """One result per file, in order: {"file", "predictions"} or {"file", "error"}."""
    trained = classifier.load_classifier(model_path)
    results: list[dict[str, Any]] = []
    images: dict[int, np.ndarray] = {}  # position in image_paths -> (28, 28) pixels
    for position, path in enumerate(image_paths):
        try:
            images[position] = load_image(path)
            results.append({"file": str(path)})
        except DataError as error:
            results.append({"file": str(path), "error": str(error)})
    if images:
        predictions = trained.classify(np.stack(list(images.values())), top_k)
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
    """The command line: image files, output format, the model."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.tools.predict",
        description="Classify PNG or JPEG photos of garments with the trained Fashion-MNIST model.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to classify")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--model",
        help="a .keras file (default: data/model/model.keras) or a registered model: models:/<name>@<alias> "
        "or models:/<name>/<version>, from $MLFLOW_TRACKING_URI (else the project's mlflow.db)",
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
    """Entry point: 0 when every image was classified; 1 when any failed or the model was refused."""
    args = parse_args(argv)
    try:
        with registry.model_file(args.model, paths.project_paths) as model_path:
            results = classify_files(args.images, model_path, args.top)
    except FileNotFoundError as error:
        print(f"error: {error}; or pass --model", file=sys.stderr)
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
