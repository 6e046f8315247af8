"""Training strategies: TF_CONFIG, the batch rule, mirrored on 2 logical CPUs, 2 real workers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import tiny_arrays
from servers import free_port
from stage_runner import run_stage, snapshot, stage_command

from fashion_cnn import errors
from fashion_cnn.data import splits as data
from fashion_cnn.training import distribute
from fashion_cnn.training.config import ProjectConfig

# The tiny profile: small_cnn, 2 epochs, 32 images per gradient step.
TINY_RUN = ["model=small_cnn", "train.epochs=2"]
GLOBAL_BATCH = 32
# How close two-replica training must stay to one-device training after the tiny run (the replicas
# draw their own dropout masks and sum in another order, so it is close, not equal).
LOSS_RELATIVE_TOLERANCE = 0.05
ACCURACY_TOLERANCE = 0.05


def worker_config(task_type: str, index: int, cluster: dict[str, list[str]] | None = None) -> str:
    cluster = cluster or {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# ---- TF_CONFIG, chief, the batch and learning-rate rule (no training) ----


def test_worker_zero_is_the_chief_unless_the_cluster_names_one() -> None:
    first = distribute.parse_tf_config(worker_config("worker", 0))
    second = distribute.parse_tf_config(worker_config("worker", 1))
    assert (first.is_chief, second.is_chief, first.workers) == (True, False, 2)
    with_chief = {"chief": ["127.0.0.1:2221"], "worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
    chief = distribute.parse_tf_config(worker_config("chief", 0, with_chief))
    worker = distribute.parse_tf_config(worker_config("worker", 0, with_chief))
    assert (chief.is_chief, worker.is_chief, chief.workers) == (True, False, 3)


BAD_TF_CONFIGS = {
    "unset": ("", ["train.strategy = 'multi_worker'", "TF_CONFIG", "not set"]),
    "not-json": ("{cluster: 1", ["not valid JSON"]),
    "no-cluster": ('{"task": {"type": "worker", "index": 0}}', ["no 'cluster'"]),
    "bad-address": (worker_config("worker", 0, {"worker": ["localhost"]}), ["'host:port'"]),
    "no-task": ('{"cluster": {"worker": ["127.0.0.1:2222"]}}', ["no 'task'"]),
    "task-type": (worker_config("ps", 0), ["task.type = 'ps'", "allowed: worker"]),
    "task-index": (worker_config("worker", 2), ["task.index = 2", "2 worker addresses"]),
}


@pytest.mark.parametrize("case", list(BAD_TF_CONFIGS))
def test_multi_worker_without_a_valid_tf_config_is_one_line(case: str) -> None:
    raw, fragments = BAD_TF_CONFIGS[case]
    with pytest.raises(errors.ConfigError) as raised:
        distribute.current_task("multi_worker", {"TF_CONFIG": raw} if raw else {})
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message


def test_other_strategies_train_alone_whatever_tf_config_says() -> None:
    task = distribute.current_task("mirrored", {"TF_CONFIG": worker_config("worker", 1)})
    assert task == distribute.SINGLE_PROCESS and task.is_chief


def test_only_a_non_chief_worker_keeps_hydra_out_of_the_repository() -> None:
    assert distribute.hydra_overrides_for_worker({"TF_CONFIG": worker_config("worker", 1)}) == list(
        distribute.NON_CHIEF_HYDRA_OVERRIDES
    )
    assert distribute.hydra_overrides_for_worker({"TF_CONFIG": worker_config("worker", 0)}) == []
    assert distribute.hydra_overrides_for_worker({"TF_CONFIG": "{broken"}) == []
    assert distribute.hydra_overrides_for_worker({}) == []


def test_batch_size_is_per_replica_and_learning_rate_scales_only_when_asked(make_config) -> None:
    default = make_config().train
    assert (default.strategy, default.learning_rate_scaling) == ("auto", "none")
    assert distribute.global_batch_size(default, 1) == default.batch_size
    assert distribute.global_batch_size(default, 4) == 4 * default.batch_size
    assert distribute.effective_learning_rate(default, 4) == default.learning_rate
    linear = make_config("train.learning_rate_scaling=linear").train
    assert distribute.effective_learning_rate(linear, 1) == linear.learning_rate
    assert distribute.effective_learning_rate(linear, 4) == pytest.approx(4 * linear.learning_rate)


# ---- real training (slow) ----


def make_tiny_project(destination: Path, repo_root: Path) -> Path:
    """params, dvc.yaml and conf/ of the repo plus 600 train / 200 validation prepared images."""
    destination.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(repo_root / name, destination / name)
    shutil.copytree(repo_root / "conf", destination / "conf")
    data_config = ProjectConfig.from_params(yaml.safe_load((repo_root / "params.yaml").read_text())).data
    splits, mean, std = data.split_and_standardize(
        *tiny_arrays(test_count=100), data_config.model_copy(update={"validation_size": 200})
    )
    data.save_prepared(destination / "data/prepared", splits, mean, std)
    return destination


# Runs in a fresh interpreter: the CPU can be split only before TensorFlow initializes.
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from hydra import compose, initialize
    from fashion_cnn.config import cli, schema
    from fashion_cnn.data import splits as data
    from fashion_cnn.training import distribute, loop, runtime
    from fashion_cnn.training.config import ProjectConfig

    root = Path(sys.argv[1])
    cli.register_stage_config(root)
    prepared = root / "data" / "prepared"
    train_split = data.load_split(prepared, "train")
    validation_split = data.load_split(prepared, "validation")
    results = {}
    for strategy_name, batch_size in (("auto", int(sys.argv[2])), ("mirrored", int(sys.argv[3]))):
        overrides = [*sys.argv[4:], f"train.strategy={strategy_name}", f"train.batch_size={batch_size}"]
        with initialize(version_base="1.3", config_path=None):
            composed = compose(cli.STAGE_CONFIG_NAME, overrides=overrides)
        run_config = schema.validate(schema.to_plain_dict(composed), ProjectConfig)
        strategy = distribute.make_strategy(strategy_name, "CPU")
        settings = runtime.resolve_runtime(run_config.train, "CPU", strategy)
        runtime.seed_everything(run_config.seed, run_config.train.deterministic)
        runtime.apply_precision(settings)
        model, rows = loop.fit(run_config, train_split, validation_split, settings, strategy, chief=False)
        kernel = model.trainable_variables[0].value  # a tf.Variable; under a strategy, one per replica
        devices = sorted(component.device for component in kernel.values) if strategy else []
        results[strategy_name] = {"runtime": settings.as_dict(), "rows": rows, "devices": devices}
    print("RESULTS " + json.dumps(results))
    """
)


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_trains_like_one_device(tmp_path: Path, repo_root: Path) -> None:
    project = make_tiny_project(tmp_path / "project", repo_root)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(project), str(GLOBAL_BATCH), str(GLOBAL_BATCH // 2), *TINY_RUN],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULTS ", 1)[1])
    one_device, mirrored = results["auto"], results["mirrored"]

    assert one_device["runtime"]["strategy"] == "default" and one_device["runtime"]["replicas"] == 1
    assert mirrored["runtime"]["strategy"] == "MirroredStrategy"
    assert mirrored["runtime"]["replicas"] == 2
    # Every weight lives on both logical CPUs; each step still sees 32 images (16 per replica).
    assert [device.rsplit("/", 1)[-1] for device in mirrored["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert (
        mirrored["runtime"]["global_batch_size"] == one_device["runtime"]["global_batch_size"] == GLOBAL_BATCH
    )

    single, double = one_device["rows"][-1], mirrored["rows"][-1]
    assert double["loss"] == pytest.approx(single["loss"], rel=LOSS_RELATIVE_TOLERANCE)
    assert double["accuracy"] == pytest.approx(single["accuracy"], abs=ACCURACY_TOLERANCE)
    assert double["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=ACCURACY_TOLERANCE)
    # It learned: far better than the 10% of guessing.
    assert double["val_accuracy"] > 0.3


def epoch_lines(output: str) -> list[str]:
    """The per-epoch report lines without their wall-clock time."""
    return [line.rsplit(" (", 1)[0] for line in output.splitlines() if line.startswith("epoch ")]


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(tmp_path: Path, repo_root: Path) -> None:
    chief_project = make_tiny_project(tmp_path / "chief", repo_root)
    worker_project = make_tiny_project(tmp_path / "worker", repo_root)
    worker_before = snapshot(worker_project)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    stores = {name: tmp_path / f"{name}-mlflow.db" for name in ("chief", "worker")}
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    processes = {}
    for index, (name, project) in enumerate((("chief", chief_project), ("worker", worker_project))):
        env = {
            **os.environ,
            "TF_CONFIG": worker_config("worker", index, cluster),
            "MLFLOW_TRACKING_URI": f"sqlite:///{stores[name]}",
            "TMPDIR": str(worker_tmp) if name == "worker" else os.environ.get("TMPDIR", "/tmp"),
        }
        processes[name] = subprocess.Popen(
            stage_command("train", *TINY_RUN, f"train.batch_size={GLOBAL_BATCH // 2}",
                          "train.strategy=multi_worker"),
            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=600)
    finally:
        for process in processes.values():
            process.kill()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}:\n{outputs[name][0][-3000:]}\n{outputs[name][1][-3000:]}"

    # Both trained the same synchronized model: identical losses and accuracies every epoch.
    chief_epochs = epoch_lines(outputs["chief"][0])
    assert len(chief_epochs) == 2 and epoch_lines(outputs["worker"][0]) == chief_epochs
    assert "2 replica(s), global batch 32" in outputs["chief"][0]

    # The chief wrote the stage's outputs and one MLflow run with the resolved distribution.
    for path in ("data/model/model.keras", "data/model/mlflow_run.json", "reports/train/metrics.json"):
        assert (chief_project / path).is_file(), path
    mlflow.set_tracking_uri(f"sqlite:///{stores['chief']}")
    (run,) = mlflow.search_runs(experiment_names=["fashion-cnn"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.strategy"] == "multi_worker"
    assert run.data.params["runtime.strategy"] == "KerasMultiWorkerStrategy"
    assert (run.data.params["runtime.workers"], run.data.params["runtime.replicas"]) == ("2", "2")
    assert run.data.params["runtime.global_batch_size"] == str(GLOBAL_BATCH)
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")) == 2

    # The other worker wrote nothing into its checkout (not even Hydra's run folder), logged nothing,
    # and removed its throw-away copy of the model.
    assert snapshot(worker_project) == worker_before
    assert not (worker_project / "outputs").exists()
    assert not stores["worker"].exists()
    assert list(worker_tmp.iterdir()) == []


@pytest.mark.slow
def test_multi_worker_without_tf_config_stops_the_stage_before_any_work(
    tmp_path: Path, repo_root: Path
) -> None:
    project = make_tiny_project(tmp_path / "project", repo_root)
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    result = run_stage("train", *TINY_RUN, "train.strategy=multi_worker", cwd=project, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: invalid params: train.strategy = 'multi_worker'")
    assert "TF_CONFIG" in errors[0]
    assert not (project / "data" / "model").exists()
    assert not Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).exists()
