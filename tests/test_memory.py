"""The memory report: the seed's worked example, the default model, batch memory, the CLI and the stage."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from stage_runner import run_stage

from fashion_cnn import errors
from fashion_cnn.model import architecture, costs, layers, spatial_layers
from fashion_cnn.training import memory_check

# Multiply-adds per image of the seed CNN, layer by layer:
# conv 64 7x7 on 28x28x1, conv 128 3x3 on 14x14x64, conv 128 3x3 on 14x14x128, conv 256 3x3 on 7x7x128,
# conv 256 3x3 on 7x7x256, dense 2304->128, 128->64, 64->10.
SEED_CNN_MULTIPLY_ADDS = (
    28 * 28 * 64 * 49
    + 14 * 14 * 128 * 9 * 64
    + 14 * 14 * 128 * 9 * 128
    + 7 * 7 * 256 * 9 * 128
    + 7 * 7 * 256 * 9 * 256
    + 2304 * 128
    + 128 * 64
    + 64 * 10
)


def tiny_model_config() -> architecture.ModelConfig:
    """Input 4x4x1 -> conv 2 (4x4x2 = 32 values) -> max pool (2x2x2 = 8) -> flatten (8) -> dense 10."""
    return architecture.ModelConfig(
        name="tiny",
        input_shape=[4, 4, 1],
        layers=[
            spatial_layers.ConvLayer(type="conv", filters=2, kernel_size=3),
            spatial_layers.PoolLayer(type="max_pool"),
            layers.FlattenLayer(type="flatten"),
            layers.DenseLayer(type="dense", units=10, activation="softmax"),
        ],
    )


def test_conv_layer_cost_reproduces_the_seed_example() -> None:
    cost = costs.conv_layer_cost((150, 100), channels=3, kernel=5, filters=200, stride=1, padding="same")
    assert cost.output_shape == (150, 100, 200)
    assert cost.parameters == 15_200
    assert cost.multiply_adds == 225_000_000
    assert costs.output_bytes(cost, 4) == 12_000_000
    assert costs.output_bytes(cost, 4) * 100 == 1_200_000_000
    assert costs.output_bytes(cost, 2) == 6_000_000
    line = costs.seed_example_line()
    for expected in ("15,200 parameters", "225,000,000 multiplications", "12 MB per instance", "1.2 GB"):
        assert expected in line


def test_conv_layer_cost_with_stride_and_valid_padding() -> None:
    cost = costs.conv_layer_cost((13, 13), channels=1, kernel=6, filters=4, stride=5, padding="valid")
    assert cost.output_shape == (2, 2, 4)
    assert cost.multiply_adds == 2 * 2 * 4 * 36


@pytest.mark.parametrize(
    ("count", "text"), [(12_000_000, "12 MB"), (1_200_000_000, "1.2 GB"), (3136, "3.14 kB")]
)
def test_format_bytes_uses_decimal_units(count: int, text: str) -> None:
    assert costs.format_bytes(count) == text


def test_default_model_numbers(make_config) -> None:
    project_config = make_config()
    report = costs.memory_report(project_config.model, project_config.train.batch_size)
    assert report["totals"]["parameters"] == 1_413_834 == architecture.count_parameters(project_config.model)
    assert report["totals"]["multiply_adds"] == SEED_CNN_MULTIPLY_ADDS
    first_conv = report["layers"][1]
    assert first_conv["name"] == "00_conv" and first_conv["output_shape"] == [28, 28, 64]
    assert first_conv["activation_bytes"] == {"float32": 28 * 28 * 64 * 4, "float16": 28 * 28 * 64 * 2}
    assert [layer["name"] for layer in report["layers"]][0] == "input"
    assert len(report["layers"]) == len(project_config.model.layers) + 1


def test_parameters_per_layer_equal_keras(make_config) -> None:
    project_config = make_config("model=lenet5")
    keras_model = architecture.build_model(project_config.model)
    layer_costs = architecture.infer_shapes(project_config.model)
    assert [cost.parameters for cost in layer_costs] == [layer.count_params() for layer in keras_model.layers]
    assert [cost.output_shape for cost in layer_costs] == [
        tuple(layer.output.shape[1:]) for layer in keras_model.layers
    ]


def test_batch_memory_for_training_and_inference() -> None:
    report = costs.memory_report(tiny_model_config(), batch_size=5)
    # Values per image: input 16, conv 32, pool 8, flatten 8, dense 10 = 74.
    assert report["batch"]["training_activation_bytes"] == {"float32": 5 * 74 * 4, "float16": 5 * 74 * 2}
    # The largest two consecutive layers: input + conv = 48 values.
    assert report["batch"]["inference_activation_bytes"] == {"float32": 5 * 48 * 4, "float16": 5 * 48 * 2}
    assert report["batch"]["inference_peak_layers"] == ["input", "00_conv"]


def test_estimate_training_bytes(make_config) -> None:
    default = make_config()
    report = costs.memory_report(default.model, default.train.batch_size)
    activations = report["batch"]["training_activation_bytes"]["float32"]
    weights = report["totals"]["parameter_bytes"]
    # Nadam: weights, gradients, and two moments per weight.
    assert memory_check.estimate_training_bytes(default) == activations + 4 * weights
    half = make_config("train.mixed_precision=mixed_float16")
    assert memory_check.estimate_training_bytes(half) == activations // 2 + 4 * weights
    plain_sgd = make_config("train.optimizer=sgd", "train.momentum=0.0")
    assert memory_check.estimate_training_bytes(plain_sgd) == activations + 2 * weights
    bigger = make_config("train.batch_size=320")
    assert memory_check.estimate_training_bytes(bigger) == 10 * activations + 4 * weights


def test_memory_warning(make_config) -> None:
    project_config = make_config()
    message = memory_check.memory_warning(project_config, available_bytes=1_000_000)
    assert message is not None and "train.batch_size = 32" in message and "\n" not in message
    assert memory_check.memory_warning(project_config, available_bytes=10**12) is None
    assert memory_check.available_memory_bytes() is None or memory_check.available_memory_bytes() > 0


@pytest.mark.reliability(
    case="a model and batch that would not fit in this machine's memory",
    sees="one line before any run; FASHION_CNN_IGNORE_MEMORY_CHECK=1 makes it a warning",
)
def test_training_that_would_not_fit_stops_unless_the_user_says_go_on(make_config, monkeypatch) -> None:
    project_config = make_config()
    with pytest.raises(errors.ConfigError) as raised:
        memory_check.check_memory(project_config, available_bytes=1_000_000)
    message = str(raised.value)
    assert (
        "(estimated) but only 1 MB is available" in message and memory_check.IGNORE_MEMORY_ENV_VAR in message
    )
    assert memory_check.check_memory(project_config, available_bytes=10**12) is None
    monkeypatch.setenv(memory_check.IGNORE_MEMORY_ENV_VAR, "1")
    assert "1 MB is available" in memory_check.check_memory(project_config, available_bytes=1_000_000)


def test_markdown_has_a_row_per_layer_and_the_totals(make_config) -> None:
    project_config = make_config()
    report = costs.memory_report(project_config.model, project_config.train.batch_size)
    markdown = costs.format_markdown(report)
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    # Header, every layer, total; then the batch table's header and two rows.
    assert len(table_rows) == 1 + len(report["layers"]) + 1 + 3
    assert "**1,413,834**" in markdown and "One batch of 32 images" in markdown
    assert costs.seed_example_line() in markdown


def test_stage_writes_the_reports_and_logs_them(project: Path) -> None:
    result = run_stage("memory", cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    markdown = (project / "reports" / "memory.md").read_text()
    report = json.loads((project / "reports" / "memory.json").read_text())
    assert report["totals"]["parameters"] == 1_413_834 and report["batch_size"] == 32
    assert markdown.strip() in result.stdout
    # The stage's last line splits its time into starting and its work (benchmarks/startup.py reads it).
    done = re.search(
        r"^stage memory done in ([\d.]+) s: ([\d.]+) s its work, ([\d.]+) s starting \(Python, imports, "
        r"config\)$",
        result.stdout,
        re.M,
    )
    assert done is not None, result.stdout[-500:]
    total, work, starting = map(float, done.groups())
    assert starting > 0 and abs(total - work - starting) <= 0.11

    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("fashion-cnn-pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["stage"] == "memory" and run.data.metrics["parameters"] == 1_413_834
    assert {"memory.json", "memory.md"} <= {item.path for item in client.list_artifacts(run.info.run_id)}


def test_cli_with_overrides_prints_and_writes_nothing(project: Path) -> None:
    result = run_stage("memory", "model=lenet5", "train.batch_size=128", cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "# Memory report: lenet5" in result.stdout
    assert "**61,706**" in result.stdout and "One batch of 128 images" in result.stdout
    assert not (project / "reports" / "memory.md").exists()
    assert not (project / "reports" / "memory.json").exists()
