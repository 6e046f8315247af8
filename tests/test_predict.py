"""Predict: image files the tests write, a small model really trained on Fashion-MNIST, the real CLI."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.idx import load_images, load_labels
from fashion_cnn.data.splits import split_and_standardize
from fashion_cnn.errors import DataError
from fashion_cnn.serving import classifier
from fashion_cnn.tools import predict
from fashion_cnn.training.config import ProjectConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 2000
TRAIN_EPOCHS = 2


@dataclass(frozen=True)
class TrainedProject:
    """A temp project: model.keras (its standardization inside) and one test garment written as files."""

    model_file: Path
    garment: np.ndarray  # (28, 28) uint8, light garment on black, as in Fashion-MNIST
    expected_class: int  # the saved model's own prediction on the garment's raw pixels
    dark_png: Path  # the garment as it is: 28x28 greyscale
    light_png: Path  # inverted (dark garment on white), 4x larger, not square, RGB
    light_jpg: Path  # the same as JPEG


def write_png(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    """Save uint8 pixels as an image file; the format follows the suffix."""
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(path, quality=95)
    return path


def small_cnn_config():
    """params.yaml with the small_cnn preset from conf/model swapped in, validated like a stage does."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = yaml.safe_load((ROOT / "conf" / "model" / "small_cnn.yaml").read_text())
    return ProjectConfig.from_params(raw)


def pick_garment(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> int:
    """Index of a confidently, correctly classified test image whose top and bottom 4 rows are empty.

    Empty rows let the light variant be cropped to a non-square canvas without losing any garment.
    """
    for index, (image, label, scores) in enumerate(zip(images, labels, probabilities, strict=True)):
        margins_empty = image[:4].max() == 0 and image[-4:].max() == 0
        if margins_empty and scores.argmax() == label and scores.max() > 0.9:
            return index
    pytest.fail("no confidently classified test image with empty top and bottom rows")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_dataset: Path) -> TrainedProject:
    """Train small_cnn for two epochs on the first 2,000 real training images and save what predict reads."""
    import keras

    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.model.standardization import with_standardization

    config = small_cnn_config()
    data_config = config.data.model_copy(update={"validation_size": 500, "max_train_images": TRAIN_IMAGES})
    train_images = load_images(real_dataset / "train-images-idx3-ubyte.gz")[: TRAIN_IMAGES + 500]
    train_labels = load_labels(real_dataset / "train-labels-idx1-ubyte.gz")[: TRAIN_IMAGES + 500]
    test_images = load_images(real_dataset / "t10k-images-idx3-ubyte.gz")[:300]
    test_labels = load_labels(real_dataset / "t10k-labels-idx1-ubyte.gz")[:300]
    splits, mean, std = split_and_standardize(
        train_images, train_labels, test_images, test_labels, data_config
    )

    keras.utils.set_random_seed(config.seed)
    model = build_model(config.model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(
        splits["train"].images,
        splits["train"].labels,
        batch_size=config.train.batch_size,
        epochs=TRAIN_EPOCHS,
        verbose=0,
    )
    root = tmp_path_factory.mktemp("project")
    model_file = root / "model" / "model.keras"
    model_file.parent.mkdir()
    # The layers trained on standardized images; the model saved takes raw pixels, as the train stage's.
    saved = with_standardization(model, mean, std)
    saved.save(model_file)

    # What predict will compute: the saved model on the raw grey levels, (300, 28, 28, 1) 0..255.
    raw_test = splits["test"].pixels[..., np.newaxis].astype(np.float32)
    probabilities = saved.predict(raw_test, verbose=0)  # (300, 10)
    index = pick_garment(test_images, test_labels, probabilities)
    garment = test_images[index]
    # 4x larger, rows 16..95 only (the empty margins cut away): 112 wide, 80 high.
    light = 255 - np.kron(garment, np.ones((4, 4), dtype=np.uint8))[16:96]
    images_dir = root / "images"
    images_dir.mkdir()
    return TrainedProject(
        model_file=model_file,
        garment=garment,
        expected_class=int(probabilities[index].argmax()),
        dark_png=write_png(images_dir / "dark.png", garment),
        light_png=write_png(images_dir / "light.png", light, mode="RGB"),
        light_jpg=write_png(images_dir / "light.jpg", light, mode="RGB"),
    )


# ---- image loading and the model's input ----


def test_load_image_keeps_a_fashion_mnist_image_unchanged(tmp_path: Path) -> None:
    # Dark background, garment touching the left and right edges and centred vertically:
    # Fashion-MNIST's own layout, so every step must be the identity.
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24] = np.linspace(30, 255, 28, dtype=np.uint8)
    loaded = predict.load_image(write_png(tmp_path / "garment.png", pixels))
    assert loaded.dtype == np.float32 and loaded.shape == (28, 28)
    np.testing.assert_array_equal(loaded, pixels.astype(np.float32))


def test_load_image_inverts_a_light_background_trims_and_pads(tmp_path: Path) -> None:
    # A dark 40x100 bar off-centre on a white 200x120 RGB photo.
    photo = np.full((120, 200), 255, dtype=np.uint8)
    photo[10:110, 20:60] = 0
    loaded = predict.load_image(write_png(tmp_path / "photo.png", photo, mode="RGB"))
    assert loaded.shape == (28, 28)
    # Light background became black, the bar became light, filling the height, centred, 11.2 px wide.
    assert loaded[:, :6].max() == 0 and loaded[:, -6:].max() == 0
    assert (loaded[:, 12:16] > 250).all()
    assert loaded.sum() == pytest.approx(28 * 11.2 * 255, rel=0.05)


def test_load_image_composites_transparency_onto_white(tmp_path: Path) -> None:
    # A fully transparent canvas whose hidden colour is black, with an opaque black 10x20 bar:
    # read as white behind a black bar, it inverts to a light bar on black, half as wide as high.
    rgba = np.zeros((50, 50, 4), dtype=np.uint8)
    rgba[15:35, 20:30, 3] = 255
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    loaded = predict.load_image(path)
    assert loaded[:, :3].max() == 0 and loaded[:, -3:].max() == 0 and (loaded[:, 10:18] > 250).all()


def test_load_image_scales_16_bit_greyscale(tmp_path: Path) -> None:
    pixels = np.zeros((28, 28), dtype=np.uint16)
    pixels[4:24] = 65535 // 2
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert predict.load_image(path)[14, 14] == pytest.approx(127.5, abs=0.5)


def test_load_image_reads_colour_as_its_luminance(tmp_path: Path) -> None:
    # Colour is read, not refused (as documented): a pure red bar on black is the grey of red's
    # luminance, 0.299 * 255 = 76, as in Pillow's convert("L").
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[4:24, :, 0] = 255
    loaded = predict.load_image(write_png(tmp_path / "red.png", rgb, mode="RGB"))
    assert loaded[4:24].min() == pytest.approx(76, abs=1) and loaded[4:24].max() == pytest.approx(76, abs=1)


def _random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(500))
    return path


def _truncated_png(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _text(path: Path) -> Path:
    path.write_text("label,pixel0,pixel1\n9,0,0\n")
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height greyscale pixels and holds no pixel data (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def unreadable(make_file, fragment: str, case: str, sees: str, name: str):
    """One row of the unreadable-file table: how the file is made and what its one line says."""
    return pytest.param(make_file, fragment, marks=pytest.mark.reliability(case=case, sees=sees), id=name)


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


NOT_AN_IMAGE = "one line naming the file, 'not an image file'"
TOO_LARGE = "one line naming the file, 'image too large', its pixel count and the 50 MP cap"


@pytest.mark.parametrize(
    ("make_file", "fragment"),
    [
        unreadable(lambda tmp: _random_bytes(tmp / "random.png"), "not an image file",
                   "predict: a .png of random bytes", NOT_AN_IMAGE, "random-bytes"),
        unreadable(lambda tmp: _text(tmp / "pixels.csv"), "not an image file",
                   "predict: a text file (CSV)", NOT_AN_IMAGE, "text"),
        unreadable(lambda tmp: _empty(tmp / "empty.png"), "not an image file",
                   "predict: an empty file", NOT_AN_IMAGE, "empty"),
        unreadable(lambda tmp: _truncated_png(tmp / "truncated.png"), "cannot read image",
                   "predict: a truncated PNG", "one line naming the file, 'cannot read image (...)'",
                   "truncated"),
        unreadable(lambda tmp: tmp / "missing.png", "cannot read image",
                   "predict: an image file that does not exist",
                   "one line naming the file, 'No such file or directory'", "missing"),
        unreadable(lambda tmp: tmp, "cannot read image", "predict: a folder given as the image",
                   "one line naming the folder, 'Is a directory'", "directory"),
        unreadable(lambda tmp: png_header(tmp / "big.png", 9000, 6000), "9,000 x 6,000 = 54,000,000 pixels",
                   "predict: a 9000x6000 (54-megapixel) image", TOO_LARGE, "54-megapixels"),
        unreadable(lambda tmp: png_header(tmp / "bigger.png", 10000, 10000), "(100,000,000 pixels",
                   "predict: a 10000x10000 image (Pillow would only warn)", f"{TOO_LARGE}; no warning",
                   "100-megapixels"),
        unreadable(lambda tmp: png_header(tmp / "bomb.png", 20000, 20000), "(400,000,000 pixels",
                   "predict: a 20000x20000 image (a decompression bomb)", f"{TOO_LARGE}; nothing decoded",
                   "400-megapixels"),
    ],
)  # fmt: skip
def test_load_image_names_the_file_it_cannot_read(
    tmp_path: Path, make_file, fragment: str, recwarn: pytest.WarningsRecorder
) -> None:
    path = make_file(tmp_path)
    with pytest.raises(DataError) as raised:
        predict.load_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and fragment in message, message
    assert not [
        warning for warning in recwarn if issubclass(warning.category, Image.DecompressionBombWarning)
    ]


def test_an_image_under_the_cap_is_decoded_not_refused_for_size(tmp_path: Path) -> None:
    # 7000 x 7000 = 49 megapixels: no size refusal; decoding then finds no pixel data.
    with pytest.raises(DataError, match="cannot read image") as raised:
        predict.load_image(png_header(tmp_path / "large.png", 7000, 7000))
    assert "too large" not in str(raised.value)


def test_as_batch_adds_the_channel_axis_and_leaves_the_grey_levels_as_they_are() -> None:
    images = np.stack([np.full((28, 28), 10), np.full((28, 28), 250)]).astype(np.uint8)
    batch = classifier.as_batch(images)
    assert batch.shape == (2, 28, 28, 1) and batch.dtype == np.float32
    # No standardization here: the model carries it (model/standardization.py).
    np.testing.assert_array_equal(batch[..., 0], images.astype(np.float32))
    assert batch[0, 0, 0, 0] == 10.0 and batch[1, 27, 27, 0] == 250.0
    for wrong in (images[0], images[..., np.newaxis]):  # one image without the batch axis; a channel axis
        with pytest.raises(ValueError, match=r"\(count, 28, 28\)"):
            classifier.as_batch(wrong)


def test_the_classifier_standardizes_raw_images_inside_the_model(tmp_path: Path) -> None:
    """Raw grey levels in: the probabilities are the trained layers' on (images - mean) / std, so the
    standardization predict and serve rely on is the saved model's own."""
    import keras

    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.model.standardization import with_standardization

    keras.utils.set_random_seed(0)
    layers_model = build_model(small_cnn_config().model)
    generator = np.random.default_rng(0)
    mean = generator.uniform(20, 120, (1, 28, 28)).astype(np.float32)
    std = generator.uniform(40, 100, (1, 28, 28)).astype(np.float32)
    model_file = tmp_path / "model.keras"
    with_standardization(layers_model, mean, std).save(model_file)
    images = generator.integers(0, 256, (5, 28, 28)).astype(np.float32)

    probabilities = classifier.load_classifier(model_file).probabilities(images)
    standardized = ((images - mean) / std)[..., np.newaxis]
    expected = keras.ops.convert_to_numpy(layers_model(standardized, training=False))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # The standardization matters: the layers on the raw pixels answer otherwise.
    unstandardized = keras.ops.convert_to_numpy(layers_model(images[..., np.newaxis], training=False))
    assert not np.allclose(probabilities, unstandardized, atol=1e-3)


# ---- the command line ----


@pytest.mark.reliability(
    case="predict: no model file",
    sees="one line naming the missing file and `dvc repro`; exit 1",
)
def test_a_missing_model_gives_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_png(tmp_path / "garment.png", np.zeros((28, 28)))
    model_file = tmp_path / "model.keras"
    arguments = [str(image), "--model", str(model_file)]

    assert predict.main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(model_file) in error and "dvc repro" in error


def save_model(path: Path, input_shape: tuple[int, ...], classes: int) -> Path:
    """A tiny real Keras model (untrained) of the given input shape and number of outputs."""
    import keras

    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize(
    ("input_shape", "classes", "fragment"),
    [
        pytest.param(
            (32, 32, 3), 10, "(32, 32, 3)", id="32x32-colour-model",
            marks=pytest.mark.reliability(
                case="predict: a model built for other images (32x32x3)",
                sees="one line naming the model file, its input (32, 32, 3) and (28, 28, 1); exit 1",
            ),
        ),
        pytest.param(
            (28, 28, 1), 5, "(5,)", id="5-class-model",
            marks=pytest.mark.reliability(
                case="predict: a model with 5 outputs instead of 10 classes",
                sees="one line naming the model file, its output (5,) and (10,); exit 1",
            ),
        ),
    ],
)  # fmt: skip
def test_a_model_of_other_shapes_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], input_shape, classes: int, fragment: str
) -> None:
    model_file = save_model(tmp_path / "model.keras", input_shape, classes)
    image = write_png(tmp_path / "garment.png", np.zeros((28, 28)))
    arguments = [str(image), "--model", str(model_file)]
    assert predict.main(arguments) == 1
    output = capsys.readouterr()
    assert output.out == "" and output.err.count("\n") == 1
    assert (
        output.err.startswith(f"error: {model_file}: ")
        and fragment in output.err
        and "(28, 28, 1)" in output.err
    )


def test_top_must_be_between_1_and_10() -> None:
    with pytest.raises(SystemExit) as raised:
        predict.main(["garment.png", "--top", "0"])
    assert raised.value.code == 2


@pytest.mark.slow
def test_cli_json_agrees_with_the_model_on_dark_and_light_images(trained: TrainedProject) -> None:
    """The real command in a fresh process, run outside the repository."""
    files = [trained.dark_png, trained.light_png, trained.light_jpg]
    command = [sys.executable, "-m", "fashion_cnn.tools.predict", *map(str, files), "--json", "--top", "10"]
    command += ["--model", str(trained.model_file)]
    completed = subprocess.run(
        command, cwd=trained.model_file.parent, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "cudart_stub" not in completed.stderr and "cuInit" not in completed.stderr
    results = json.loads(completed.stdout)
    assert [result["file"] for result in results] == list(map(str, files))
    for result in results:
        predictions = result["predictions"]
        assert predictions[0]["index"] == trained.expected_class, result["file"]
        assert [item["class"] for item in predictions] == [CLASS_NAMES[item["index"]] for item in predictions]
        probabilities = [item["probability"] for item in predictions]
        assert len(probabilities) == 10 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_corrupt_image_is_reported_and_the_others_still_classified(
    trained: TrainedProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(os.urandom(300))
    options = ["--model", str(trained.model_file)]

    assert predict.main([str(trained.dark_png), str(corrupt), str(trained.light_png), *options]) == 1
    output = capsys.readouterr()
    assert output.err.count("\n") == 1 and output.err.startswith(f"error: {corrupt}: ")
    expected_name = CLASS_NAMES[trained.expected_class]
    blocks = output.out.strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [str(trained.dark_png), str(trained.light_png)]
    for block in blocks:
        lines = block.splitlines()
        assert len(lines) == 1 + 3 and lines[1].strip().startswith(expected_name)
        assert all(line.endswith("%") for line in lines[1:])

    assert predict.main([str(corrupt), str(trained.dark_png), "--json", "--top", "2", *options]) == 1
    results = json.loads(capsys.readouterr().out)
    assert results[0]["file"] == str(corrupt) and str(corrupt) in results[0]["error"]
    assert "predictions" not in results[0] and len(results[1]["predictions"]) == 2


@pytest.mark.slow
def test_damaged_model_file_gives_one_line(
    trained: TrainedProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "model.keras"
    damaged.write_bytes(b"not a zip archive")
    options = ["--model", str(damaged)]
    assert predict.main([str(trained.dark_png), *options]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {damaged}: not a loadable Keras model")
