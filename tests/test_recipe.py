"""The training recipe (issue #10): new layer types, augmentation, schedules, label smoothing, the preset."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from stage_runner import run_stage

from fashion_cnn.data.splits import Split
from fashion_cnn.model import architecture, costs
from fashion_cnn.model.architecture import ModelConfig
from fashion_cnn.tools import sweep_report
from fashion_cnn.training import augmentation, recipe
from fashion_cnn.training.config import AugmentationConfig, ProjectConfig

ROOT = Path(__file__).resolve().parents[1]
PRESET_EXPERIMENT = "small_vgg_one_cycle"
PRESET_MODEL = "small_vgg"
SOFTMAX_OUTPUT = {"type": "dense", "units": 10, "activation": "softmax"}
# One of each new layer type, with a projecting and an identity residual block.
RECIPE_LAYERS = [
    {"type": "conv", "filters": 8, "kernel_size": 3, "activation": "linear"},
    {"type": "batch_norm"},
    {"type": "activation", "activation": "relu"},
    {"type": "separable_conv", "filters": 12, "kernel_size": 3, "depth_multiplier": 2},
    {"type": "residual", "filters": 16, "strides": 2, "batch_norm_momentum": 0.5},
    {"type": "residual", "filters": 16},
    {"type": "global_avg_pool"},
    {"type": "batch_norm", "momentum": 0.9},
    SOFTMAX_OUTPUT,
]


def model_config(layers: list[dict]) -> ModelConfig:
    """params.yaml's model with `layers` instead of the seed's."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["layers"] = layers
    return ProjectConfig.from_params(raw).model


# ---- layer types ----


def test_recipe_layers_build_with_the_inferred_shapes_and_parameters(tmp_path: Path):
    recipe_config = model_config(RECIPE_LAYERS)
    shapes = architecture.infer_shapes(recipe_config)
    keras_model = architecture.build_model(recipe_config)
    inferred = [item.output_shape for item in shapes]
    assert inferred == [tuple(layer.output.shape[1:]) for layer in keras_model.layers]
    assert inferred[3:7] == [(28, 28, 12), (14, 14, 16), (14, 14, 16), (16,)]
    assert [item.parameters for item in shapes] == [layer.count_params() for layer in keras_model.layers]
    # Separable 3x3, 8 -> 12 channels, depth multiplier 2: 3*3*8*2 depthwise + (16 + 1) * 12 pointwise.
    assert shapes[3].parameters == 144 + 204
    projecting, identity = keras_model.layers[4], keras_model.layers[5]
    assert keras_model.layers[7].momentum == 0.9 and projecting.get_layer("04_residual_bn1").momentum == 0.5
    assert "04_residual_projection" in [layer.name for layer in projecting.layers]
    assert not any("projection" in layer.name for layer in identity.layers)
    assert (
        architecture.describe(recipe_config) == "conv8x3-bn-relu-sepconv12x3-res16x3s2-res16x3-gap-bn-dense10"
    )

    # Stock Keras layers only: the evaluate stage's safe-mode loading gives the same predictions.
    images = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype(np.float32)
    keras_model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), keras_model.predict(images, verbose=0))


def test_residual_block_adds_its_input_to_the_convolution_path():
    block = architecture.build_model(model_config(RECIPE_LAYERS)).layers[5]
    inputs = np.random.default_rng(1).normal(size=(2, 14, 14, 16)).astype(np.float32)
    by_name = {layer.name: layer for layer in block.layers}
    path = inputs
    for part in ("conv1", "bn1", "act1", "conv2", "bn2"):
        path = by_name[f"05_residual_{part}"](path, training=False)
    expected = np.maximum(keras.ops.convert_to_numpy(path) + inputs, 0.0)
    np.testing.assert_allclose(block(inputs, training=False), expected, rtol=1e-5, atol=1e-5)


def test_multiply_adds_of_recipe_layers_reach_the_memory_report():
    by_name = {row["name"]: row for row in costs.memory_report(model_config(RECIPE_LAYERS), 1)["layers"]}
    # Output 28x28: depthwise 3x3 over 16 channels, then 1x1 from 16 to 12 channels.
    assert by_name["03_separable_conv"]["multiply_adds"] == 28 * 28 * 16 * (9 + 12)
    # Output 14x14x16: 3x3 convs from 12 and from 16 channels, plus the 1x1 projection from 12.
    assert by_name["04_residual"]["multiply_adds"] == 14 * 14 * 16 * (9 * (12 + 16) + 12)
    assert by_name["05_residual"]["multiply_adds"] == 14 * 14 * 16 * 9 * (16 + 16)


# ---- augmentation ----


def batches(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def augmentation_config(**values) -> AugmentationConfig:
    settings = {"shift_pixels": 0, "horizontal_flip": False, "random_erasing": 0.0} | values
    return AugmentationConfig(**settings)


def test_augmentation_changes_training_batches_repeatably_and_anew_each_epoch():
    generator = np.random.default_rng(2)
    images = generator.normal(size=(40, 28, 28, 1)).astype(np.float32)
    labels = generator.integers(0, 10, size=40).astype(np.uint8)
    every_kind = augmentation_config(shift_pixels=2, horizontal_flip=True, random_erasing=0.5)

    def epochs_of(augment: AugmentationConfig, seed: int = 42):
        return batches(augmentation.training_dataset(images, labels, 16, 2, augment, seed))

    plain, augmented = epochs_of(augmentation_config()), epochs_of(every_kind)
    assert [len(batch_labels) for _, batch_labels in augmented] == [16, 16, 8] * 2
    for (plain_images, plain_labels), (changed_images, changed_labels) in zip(plain, augmented, strict=True):
        # Same images in the same order (labels follow them), changed by augmentation.
        np.testing.assert_array_equal(plain_labels, changed_labels)
        assert not np.array_equal(plain_images, changed_images)
    # Without augmentation a batch is the training images themselves.
    first_plain_images, first_plain_labels = plain[0]
    positions = [np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0] for image in first_plain_images]
    np.testing.assert_array_equal(labels[positions], first_plain_labels)
    # Seeded: the same seed gives the same batches; each epoch is reshuffled.
    for (first, _), (again, _) in zip(augmented, epochs_of(every_kind), strict=True):
        np.testing.assert_array_equal(first, again)
    assert not np.array_equal(augmented[0][1], augmented[3][1])


def test_shift_moves_every_image_by_at_most_the_allowed_pixels():
    images = np.zeros((200, 28, 28, 1), np.float32)
    images[:, 14, 10, 0] = 1.0
    shifted = augmentation.shift(tf.constant(images), 2, tf.constant([0, 1], tf.int64)).numpy()
    assert shifted.shape == images.shape
    rows, columns = np.nonzero(shifted[..., 0])[1:]
    assert len(rows) == 200  # one bright pixel per image, none lost
    offsets = set(zip(rows - 14, columns - 10, strict=True))
    assert offsets == {(down, right) for down in range(-2, 3) for right in range(-2, 3)}


def test_horizontal_flip_mirrors_about_half_of_the_images():
    images = np.random.default_rng(3).normal(size=(100, 28, 28, 1)).astype(np.float32)
    flipped = augmentation.horizontal_flip(tf.constant(images), tf.constant([0, 2], tf.int64)).numpy()
    mirrored = (flipped == images[:, :, ::-1]).all(axis=(1, 2, 3))
    unchanged = (flipped == images).all(axis=(1, 2, 3))
    assert (mirrored ^ unchanged).all()
    assert 30 < mirrored.sum() < 70


def test_random_erasing_sets_one_rectangle_to_the_mean_image():
    images = np.ones((100, 28, 28, 1), np.float32)
    seed = tf.constant([0, 3], tf.int64)
    erased = augmentation.random_erasing(tf.constant(images), 1.0, seed).numpy()[..., 0]
    for image in erased:
        rows, columns = np.nonzero(image == augmentation.FILL_VALUE)
        box = image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        assert (box == augmentation.FILL_VALUE).all()  # a filled rectangle, nothing else
        # 2% to 40% of the image, give or take the rounding of both sides.
        assert 0.01 * 784 <= len(rows) <= 0.45 * 784
    untouched = augmentation.random_erasing(tf.constant(images), 0.0, seed).numpy()
    np.testing.assert_array_equal(untouched, images)


def test_validation_data_are_never_augmented_and_training_batches_come_from_the_seeded_pipeline(make_config):
    generator = np.random.default_rng(4)
    train_split = Split(generator.normal(size=(20, 28, 28, 1)).astype(np.float32), np.arange(20) % 10)
    validation_split = Split(generator.normal(size=(8, 28, 28, 1)).astype(np.float32), np.arange(8) % 10)

    default = recipe.fit_arguments(make_config(), train_split, validation_split)
    assert isinstance(default["x"], tf.data.Dataset) and default["steps_per_epoch"] == 1
    assert default["validation_data"][0] is validation_split.images

    augmented_config = make_config("train.augmentation.shift_pixels=3", "train.label_smoothing=0.1")
    augmented = recipe.fit_arguments(augmented_config, train_split, validation_split)
    assert isinstance(augmented["x"], tf.data.Dataset)
    assert augmented["steps_per_epoch"] == 1
    validation_images, validation_labels = augmented["validation_data"]
    assert validation_images is validation_split.images
    # One-hot for the label-smoothed loss, the same classes.
    np.testing.assert_array_equal(validation_labels.argmax(axis=1), validation_split.labels)


def test_every_epoch_is_a_new_permutation_and_a_resumed_run_sees_the_same_batches():
    images = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1) * np.ones((1, 28, 28, 1), np.float32)
    labels = np.arange(50) % 10
    plain = augmentation_config()

    def epoch_orders(dataset: tf.data.Dataset) -> list[list[int]]:
        served = [int(image[0, 0, 0]) for batch_images, _ in batches(dataset) for image in batch_images]
        return [served[start : start + 50] for start in range(0, len(served), 50)]

    orders = epoch_orders(augmentation.training_dataset(images, labels, 16, 4, plain, seed=42))
    assert len(orders) == 4
    for order in orders:
        assert sorted(order) == list(range(50))  # every image once per epoch
    assert len({tuple(order) for order in orders}) == 4  # reshuffled every epoch
    # Starting at epoch 2 (a resumed run) serves exactly epochs 2 and 3 of the uninterrupted run.
    resumed = epoch_orders(
        augmentation.training_dataset(images, labels, 16, 4, plain, seed=42, first_epoch=2)
    )
    assert resumed == orders[2:]
    # With augmentation too: the batches depend on the batch number, not on where the run started.
    erasing = augmentation_config(random_erasing=1.0)
    whole = batches(augmentation.training_dataset(images, labels, 16, 2, erasing, seed=7))
    second = batches(augmentation.training_dataset(images, labels, 16, 2, erasing, seed=7, first_epoch=1))
    for (expected, _), (served, _) in zip(whole[4:], second, strict=True):
        np.testing.assert_array_equal(expected, served)


# ---- learning rate and loss ----

PEAK = 0.01
STEPS_IN_EPOCH = 10  # and 4 epochs: 40 steps in all


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], {0: PEAK, 39: PEAK}),
        (["train.schedule.name=cosine"], {0: PEAK, 20: PEAK / 2, 40: 0.0}),
        (["train.schedule.name=cosine", "train.schedule.final_fraction=0.1"], {40: PEAK / 10}),
        # Warm-up over the first 10 steps from PEAK / 25, then half a cosine over the other 30.
        (["train.schedule.name=one_cycle", "train.schedule.warmup_fraction=0.25"],
         {0: PEAK / 25, 5: (PEAK / 25 + PEAK) / 2, 10: PEAK, 25: PEAK / 2, 40: 0.0}),
        (["train.schedule.name=step", "train.schedule.step_epochs=2", "train.schedule.step_factor=0.1"],
         {0: PEAK, 20: PEAK, 21: PEAK / 10, 39: PEAK / 10}),
    ],
)  # fmt: skip
def test_schedules_give_the_expected_learning_rate_at_chosen_steps(make_config, overrides, expected):
    train_config = make_config(f"train.learning_rate={PEAK}", "train.epochs=4", *overrides).train
    rate = recipe.learning_rate(train_config, STEPS_IN_EPOCH)
    for step, value in expected.items():
        actual = rate if isinstance(rate, float) else float(rate(step))
        assert actual == pytest.approx(value, rel=1e-5, abs=1e-9), (step, actual)


def test_label_smoothing_switches_to_one_hot_labels(make_config):
    assert recipe.loss(make_config().train) == "sparse_categorical_crossentropy"
    smoothed = make_config("train.label_smoothing=0.1").train
    loss = recipe.loss(smoothed)
    assert loss.get_config()["label_smoothing"] == 0.1
    one_hot = recipe.encode_labels(np.array([3, 0]), smoothed)
    np.testing.assert_array_equal(one_hot.argmax(axis=1), [3, 0])
    # A confident right answer still costs something: the target is 0.91 for the class, 0.01 elsewhere.
    confident = np.full((2, 10), 1e-6, np.float32)
    confident[[0, 1], [3, 0]] = 1.0
    assert float(loss(one_hot, confident)) > 0.3


# ---- the preset ----


def test_preset_composes_from_conf_and_fits_its_model(make_config):
    preset = make_config(f"experiment={PRESET_EXPERIMENT}")
    # What `dvc exp run -S experiment=...` writes to params.yaml: conf/config.yaml composed.
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        from_conf = compose("config", overrides=[f"experiment={PRESET_EXPERIMENT}"])
    assert ProjectConfig.from_params(OmegaConf.to_container(from_conf, resolve=True)) == preset
    assert preset.model.name == PRESET_MODEL
    assert preset.train.augmentation.enabled and preset.train.schedule.name != "constant"
    assert preset.data.max_train_images is None  # the whole training split
    keras_model = architecture.build_model(preset.model)
    assert keras_model.count_params() == architecture.count_parameters(preset.model)


@pytest.mark.slow
def test_preset_trains_one_tiny_epoch_through_the_stage_entry_points(
    project: Path, synthetic_prepared: Path, make_config
):
    shutil.copytree(synthetic_prepared, project / "data" / "prepared")
    overrides = [f"experiment={PRESET_EXPERIMENT}", "train.epochs=1", "train.batch_size=25"]
    trained = run_stage("train", *overrides, cwd=project)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "epoch 1/1" in trained.stdout
    assert json.loads((project / "reports/train/metrics.json").read_text())["val_accuracy"] >= 0

    # Loaded as the evaluate stage loads it: safe mode, no custom code. It is the model to use, raw
    # pixels in, without the optimizer's training state (checkpoints/ holds that while it matters).
    saved = keras.saving.load_model(project / "data/model/model.keras", safe_mode=True)
    assert saved.name == PRESET_MODEL
    assert saved.layers[0].name == "standardization"
    assert getattr(saved, "optimizer", None) is None


@pytest.mark.slow
def test_preset_fits_along_its_schedule(synthetic_prepared: Path, make_config) -> None:
    """What the train stage's fit runs for the preset: 100 training images in batches of 25 are 4
    optimizer steps along the one-cycle schedule that peaks at train.learning_rate."""
    from fashion_cnn.data.splits import load_split
    from fashion_cnn.training import loop, runtime

    config = make_config(f"experiment={PRESET_EXPERIMENT}", "train.epochs=1", "train.batch_size=25")
    settings = runtime.resolve_runtime(config.train, "CPU", None)
    runtime.seed_everything(config.seed, config.train.deterministic)
    runtime.apply_precision(settings)
    splits = {name: load_split(synthetic_prepared, name) for name in ("train", "validation")}
    model, rows = loop.fit(config, splits["train"], splits["validation"], settings, None, chief=False)
    assert len(rows) == 1
    assert int(model.optimizer.iterations.numpy()) == 4
    schedule = model.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["warmup_target"] == pytest.approx(config.train.learning_rate)


# ---- the sweep report ----


def log_training_run(name: str, params: dict, metrics: dict, status: str = "FINISHED") -> None:
    """A run with the tags, params and metrics the train (and, for finalists, evaluate) stage logs."""
    import mlflow

    with mlflow.start_run(run_name=name, tags={"stage": "train"}):
        mlflow.log_params({"seed": 42, "model.layers.0.filters": 24, **params})
        mlflow.log_metrics(metrics)
        if status != "FINISHED":
            mlflow.end_run(status=status)


@pytest.mark.slow
def test_sweep_report_tables_the_runs_and_draws_the_frontier(project: Path, png_check, capsys):
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    assert sweep_report.main([]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: no finished training runs in MLflow experiment 'fashion-cnn-recipe'")
    assert not (project / "reports/recipe").exists()

    mlflow.set_experiment(sweep_report.SWEEP_EXPERIMENT)
    # runtime.* params are derived from train.* (here: the learning rate on 1 replica): not columns.
    log_training_run("small_vgg e3", {"model.name": "small_vgg", "train.epochs": 3,
                                      "runtime.learning_rate": 0.004},
                     {"val_accuracy": 0.9211, "train_seconds": 400.0})  # fmt: skip
    log_training_run("small_resnet e5", {"model.name": "small_resnet", "train.epochs": 5,
                                         "runtime.learning_rate": 0.008},
                     {"val_accuracy": 0.9402, "train_seconds": 840.0, "test_accuracy": 0.9391})  # fmt: skip
    log_training_run("crashed", {"model.name": "small_vgg", "train.epochs": 9},
                     {"val_accuracy": 0.5, "train_seconds": 30.0}, status="FAILED")  # fmt: skip
    # A multirun's parent run: tagged like its jobs, but it trains nothing and logs no metrics.
    log_training_run("sweep model=small_vgg,small_resnet", {}, {})

    assert sweep_report.main([]) == 0
    rows = list(csv.DictReader((project / "reports/recipe/sweep.csv").open()))
    assert [row["run"] for row in rows] == ["small_vgg e3", "small_resnet e5"]  # by training time
    assert set(rows[0]) == {"run", "model.name", "train.epochs", "val_accuracy", "test_accuracy",
                            "train_minutes", "run_id"}  # fmt: skip
    assert rows[0]["train_minutes"] == "6.67" and rows[0]["test_accuracy"] == ""
    assert rows[1]["test_accuracy"] == "0.9391"
    png_check(project / "reports/recipe/frontier.png")
    assert "small_resnet e5" in capsys.readouterr().out
