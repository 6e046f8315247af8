"""The race (make race): conf/race.yaml, the time arithmetic, the winner's choice, the report and the
presets it races, including the large-batch gpu preset and the GPU check's verdicts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from benchmarks.gpu_checks import gpu_checks
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.reproduction import race_report
from fashion_cnn.training import recipe

ROOT = Path(__file__).resolve().parents[1]
# What runtime.read_back logs on this CPU for the gpu preset, and on a GPU.
CPU_RUN = {
    "runtime.device": "CPU",
    "runtime.jit_compile": "True",
    "runtime.dtype_policy": "float32",
    "runtime.output_dtype": "float32",
    "runtime.global_batch_size": "512",
}
GPU_RUN = CPU_RUN | {"runtime.device": "GPU", "runtime.dtype_policy": "mixed_float16"}


def row(preset: str, val: float, test: float, ratio: float, batch: int = 128) -> dict:
    return {
        "preset": preset,
        "val_accuracy": val,
        "test_accuracy": test,
        "time_ratio": ratio,
        "batch_size": batch,
    }


def copy_conf(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    return tmp_path


def test_the_race_config_names_presets_that_exist() -> None:
    race = race_report.load_race_config(ROOT)
    assert race.winner in race.presets and race.sweep_base in race.presets
    assert race.budget_ratio == 0.2 and race.target_accuracy == 0.94


@pytest.mark.reliability(
    case="conf/race.yaml names a preset that does not exist",
    sees="one line naming it and the presets there are",
)
def test_a_missing_preset_is_named(tmp_path: Path) -> None:
    root = copy_conf(tmp_path)
    path = root / "conf" / "race.yaml"
    path.write_text(path.read_text().replace("  - gpu\n", "  - gpu_fast\n"))
    with pytest.raises(FashionCnnError, match=r"no preset gpu_fast in conf/experiment/ \(there are: .*quick"):
        race_report.load_race_config(root)


@pytest.mark.reliability(
    case="conf/race.yaml with an unknown key", sees="one line naming the file and the key"
)
def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    root = copy_conf(tmp_path)
    path = root / "conf" / "race.yaml"
    path.write_text(path.read_text() + "budget_minutes: 15\n")
    with pytest.raises(FashionCnnError, match="race.yaml: invalid.*budget_minutes") as raised:
        race_report.load_race_config(root)
    assert "\n" not in str(raised.value)


def test_the_seed_recipe_is_extrapolated_from_its_last_timed_epoch() -> None:
    # 2 epochs timed (the first traces the graph): 300 s for both, then 8 more at the second's pace.
    assert race_report.seed_train_seconds(300.0, [160.0, 140.0], 10) == 300.0 + 8 * 140.0
    assert race_report.seed_train_seconds(1500.0, [150.0] * 10, 10) == 1500.0
    with pytest.raises(FashionCnnError):
        race_report.seed_train_seconds(300.0, [], 10)


def test_the_winner_is_chosen_on_validation_accuracy_within_the_budget() -> None:
    rows = [
        row("fast", val=0.920, test=0.930, ratio=0.15),
        row("better_on_validation", val=0.925, test=0.915, ratio=0.19),
        row("too_slow", val=0.950, test=0.950, ratio=0.30),
    ]
    assert race_report.choose_winner(rows, 0.2) == "better_on_validation"
    assert race_report.choose_winner(rows[2:], 0.2) is None


def test_the_verdicts_need_both_accuracy_and_time() -> None:
    race = race_report.load_race_config(ROOT)
    assert race_report.verdicts([row("a", 0.95, 0.941, 0.21), row("b", 0.9, 0.90, 0.1, batch=512)], race) == {
        "target_within_budget": False,
        "large_batch_keeps_accuracy": False,
    }
    assert race_report.verdicts([row("a", 0.95, 0.94, 0.2), row("b", 0.9, 0.905, 0.3, batch=256)], race) == {
        "target_within_budget": True,
        "large_batch_keeps_accuracy": True,
    }


def test_the_report_is_written_as_json_and_a_readable_figure(tmp_path: Path, png_check) -> None:
    seed = {"test_accuracy": 0.9012, "train_seconds": 1500.0, "epochs_timed": 2, "epochs": 10}
    run = {
        "batch_size": 128, "epochs": 5, "test_accuracy": 0.9164, "val_accuracy": 0.9238,
        "train_seconds": 290.0, "ran_as": {"device": "CPU"}, "mlflow_run_id": "0" * 32,
    }  # fmt: skip
    rows = [race_report.preset_row("small_vgg_one_cycle", run, seed["train_seconds"])]
    assert rows[0]["time_ratio"] == round(290 / 1500, 3) and rows[0]["seed_train_seconds"] == 1500.0
    report = {
        "date": "2026-11-30", "machine": {"cpu_model": "AMD EPYC", "logical_cpus": 2},
        "config": race_report.load_race_config(ROOT).model_dump(), "seed": seed, "rows": rows,
    }  # fmt: skip
    race_report.write_report(tmp_path, report)
    assert json.loads((tmp_path / race_report.RACE_JSON).read_text()) == report
    png_check(tmp_path / race_report.RACE_FIGURE)


def test_the_gpu_preset_is_large_batch_xla_nondeterministic_and_divides_its_epoch(make_config) -> None:
    gpu = make_config("experiment=gpu")
    assert gpu.train.batch_size >= race_report.LARGE_BATCH
    assert gpu.train.validation_batch_size == 1000
    assert (gpu.train.jit_compile, gpu.train.deterministic, gpu.train.mixed_precision) == (
        "on",
        False,
        "auto",
    )
    # Its learning rate is scaled up from the recipe it enlarges, with warm-up.
    base = make_config("experiment=small_vgg_one_cycle")
    assert gpu.train.learning_rate > base.train.learning_rate and gpu.train.schedule.name == "one_cycle"
    steps = recipe.steps_per_epoch(60000 - gpu.data.validation_size, gpu.train.batch_size)
    recipe.check_steps_per_execution(steps, gpu.train.steps_per_execution)


def test_the_seed_recipe_stays_the_default(make_config) -> None:
    default = make_config()
    assert (default.model.name, default.train.optimizer, default.train.batch_size) == (
        "seed_cnn",
        "nadam",
        32,
    )
    assert (default.train.epochs, default.train.mixed_precision) == (10, "none")


def test_the_gpu_check_fails_a_cpu_run_and_passes_a_gpu_run() -> None:
    on_cpu = gpu_checks(CPU_RUN, 0.91, 0.905)
    assert [what for what, passed in on_cpu.items() if not passed] == [
        "GPU visible and used (runtime.device)",
        "dtype policy mixed_float16 (runtime.dtype_policy)",
    ]
    assert all(gpu_checks(GPU_RUN, 0.91, 0.905).values())
    assert not all(gpu_checks(GPU_RUN, 0.90, 0.905).values())
    assert not all(gpu_checks(GPU_RUN | {"runtime.jit_compile": "False"}, 0.91, 0.905).values())


def test_training_callbacks_convert_no_batch_logs(make_config, tmp_path: Path, monkeypatch) -> None:
    """Keras converts every step's logs to numbers (a host sync) before calling batch hooks; the
    project's callback list must not, and its callbacks must work without them."""
    import keras
    import tensorflow as tf
    from keras.src.utils import python_utils

    from fashion_cnn.training import checkpoint, loop

    config = make_config("experiment=gpu")
    report = loop.EpochReport(config.train.epochs, log_to_mlflow=False)
    progress = loop.ProgressReport(config.train.epochs, 108, config.train.batch_size)
    callbacks = [progress, report, checkpoint.ResumableTraining(tmp_path, "fingerprint", report, 0)]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback_list = loop.BatchHooksWithoutLogs(callbacks, add_history=True, epochs=1, steps=108, model=model)
    converted = []
    original = python_utils.pythonify_logs
    monkeypatch.setattr(python_utils, "pythonify_logs", lambda logs: converted.append(logs) or original(logs))
    progress.on_epoch_begin(0)
    step_logs = {"loss": tf.constant(0.5)}
    callback_list.on_train_batch_end(0, step_logs)
    callback_list.on_test_batch_end(0, step_logs)
    assert converted == []
    # Keras's own list converts them: the check above can fail.
    keras.callbacks.CallbackList(callbacks, model=model).on_train_batch_end(0, step_logs)
    assert converted == [step_logs]


@pytest.mark.slow
def test_the_race_times_the_seed_and_a_preset_in_clean_copies_and_reports_what_ran(
    tmp_path: Path, real_dataset: Path, project_copier, png_check
) -> None:
    """`make race` end to end on small data: the seed recipe (1 epoch timed) and the quick preset."""
    import subprocess
    import sys

    import mlflow

    root = project_copier(tmp_path / "project")
    (root / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    (root / "reports").mkdir()
    shutil.copy2(ROOT / "reports" / "metrics.json", root / "reports" / "metrics.json")
    conf = root / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("max_train_images: null", "max_train_images: 1000"))
    race_file = root / "conf" / "race.yaml"
    race_text = race_file.read_text().replace("seed_epochs_timed: 2", "seed_epochs_timed: 1")
    race_file.write_text(race_text.replace("  - small_vgg_one_cycle_bf16\n  - gpu\n", "  - quick\n"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "FASHION_CNN_MIRROR": str(real_dataset),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    environment.pop("FASHION_CNN_ROOT", None)
    result = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.tools.race", "--presets", "quick"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((root / race_report.RACE_JSON).read_text())
    seed = report["seed"]
    assert seed["epochs_timed"] == 1 and seed["epochs"] == 10
    assert seed["train_seconds"] == pytest.approx(
        seed["timed_train_seconds"] + 9 * seed["epoch_seconds"][0], abs=1
    )
    assert seed["ran_as"]["global_batch_size"] == "32" and seed["ran_as"]["device"] == "CPU"
    [quick] = report["rows"]
    assert quick["preset"] == "quick" and quick["batch_size"] == 64 and quick["epochs"] == 2
    assert quick["time_ratio"] == round(quick["train_seconds"] / seed["train_seconds"], 3)
    assert 0 < quick["test_accuracy"] <= 1 and report["machine"]["logical_cpus"] >= 1
    client = mlflow.MlflowClient(store)
    for run_id in (seed["mlflow_run_id"], quick["mlflow_run_id"]):
        assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(quick["mlflow_run_id"]).data.metrics["test_accuracy"] == pytest.approx(
        quick["test_accuracy"]
    )
    png_check(root / race_report.RACE_FIGURE)
    # The clean copies are gone: only the report stays.
    assert not list(Path(tempfile.gettempdir()).glob("fashion-cnn-race-quick-*"))
