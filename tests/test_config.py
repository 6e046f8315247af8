"""The config contract: conf/ composes to params.yaml, stages run with params.yaml, bad values stop."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import stage_process
from hydra import compose, initialize, initialize_config_dir
from omegaconf import OmegaConf
from servers import free_port

from fashion_cnn import errors
from fashion_cnn.config import cli, schema
from fashion_cnn.training.config import ProjectConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def compose_conf(*overrides: str) -> dict:
    """Compose conf/config.yaml with its defaults, as DVC's Hydra composition does for `dvc exp run -S`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        composed = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(composed, resolve=True)


def committed_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def conf_preset(group: str, name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "conf" / group / f"{name}.yaml").read_text())


def test_conf_composed_with_defaults_equals_params_yaml() -> None:
    composed = compose_conf()
    assert composed == committed_params()
    # Same key order too, so `dvc exp run` rewriting params.yaml from conf/ gives a readable diff.
    assert list(composed) == list(committed_params())


def compose_stage(*overrides: str) -> dict:
    """Compose what a stage runs with (params.yaml + overrides), unvalidated, as cli.stage_main does."""
    cli.register_stage_config(REPO_ROOT)
    with initialize(version_base="1.3", config_path=None):
        composed = compose(cli.STAGE_CONFIG_NAME, overrides=list(overrides))
    return schema.to_plain_dict(composed)


def test_stage_config_is_params_yaml(make_config) -> None:
    # The DVC pitfall to avoid: a stage composing conf/ (or anything else) instead of params.yaml.
    assert compose_stage() == committed_params()
    assert make_config() == ProjectConfig.from_params(committed_params())


@pytest.mark.parametrize(
    "preset", sorted(path.stem for path in (REPO_ROOT / "conf" / "model").glob("*.yaml"))
)
def test_every_model_preset_composes_and_validates(preset: str, make_config) -> None:
    composed = compose_conf(f"model={preset}")
    assert composed["model"] == conf_preset("model", preset)
    ProjectConfig.from_params(composed)
    # The same preset swapped into a stage's run over params.yaml.
    assert make_config(f"model={preset}").model.model_dump(mode="json")["name"] == preset


def test_quick_experiment_is_small_cnn_with_its_overrides(make_config) -> None:
    quick = compose_conf("experiment=quick")
    expected = committed_params()
    expected["model"] = conf_preset("model", "small_cnn")
    expected["data"].update(max_train_images=5000, max_test_images=2000)
    expected["train"].update(epochs=2, batch_size=64)
    assert quick == expected
    # The same profile swapped into a stage's run over params.yaml.
    assert compose_stage("experiment=quick") == expected


def test_real_entry_point_runs_with_the_projects_params_yaml(project: Path, run_stage) -> None:
    # Edit the temp project's params.yaml: the stage must compose exactly it (plus the command line).
    params_file = project / "params.yaml"
    params_file.write_text(params_file.read_text().replace("\nseed: 42\n", "\nseed: 7\n"))
    result = run_stage("prepare", "--cfg", "job", "train.epochs=3", cwd=project)
    assert result.returncode == 0, result.stderr
    expected = yaml.safe_load(params_file.read_text())
    assert expected["seed"] == 7
    expected["train"]["epochs"] = 3
    assert yaml.safe_load(result.stdout) == expected


def test_override_on_the_command_line_applies_on_top(make_config) -> None:
    overridden = make_config("train.epochs=1", "model.layers.0.filters=8")
    assert overridden.train.epochs == 1
    assert overridden.model.layers[0].filters == 8
    assert overridden.train.batch_size == committed_params()["train"]["batch_size"]


# ---- bad values ----

# (override, what the one-line message must contain)
BAD_VALUES = {
    "epochs-zero": ("train.epochs=0", ["train.epochs = 0", "greater than 0"]),
    "optimizer": ("train.optimizer=adamw", ["train.optimizer = 'adamw'", "'nadam'"]),
    "padding": ("model.layers.0.padding=full", ["model.layers.0.padding = 'full'", "'same'"]),
    "no-sources": ("data.sources=[]", ["data.sources = []", "at least 1"]),
    "unknown-key": ("+trian.epochs=3", ["unknown key 'trian'", "train"]),
    "activation": ("model.layers.0.activation=relux", ["model.layers.0.activation = 'relux'"]),
    "dropout-one": ("model.layers.10.rate=1.0", ["model.layers.10.rate = 1.0", "less than 1"]),
    "learning-rate-zero": ("train.learning_rate=0", ["train.learning_rate = 0", "greater than 0"]),
    "nested-unknown-key": ("+model.layers.0.filter=3", ["unknown key 'model.layers.0.filter'", "filters"]),
    "wrong-type": ("train.epochs=abc", ["train.epochs = 'abc'", "integer"]),
    "layer-type": ("model.layers.2.type=conv3d", ["conv3d", "unknown layer type", "dense"]),
    "output-units": ("model.layers.13.units=5", ["model.layers.13", "units 10"]),
}
# The cases also run through a real stage entry point; each start-up costs ~3 s of CPU (MLflow import).
# Each stage validates the sections it reads: data values through download and prepare, model and
# train values through memory and train (both read every section and stop before any work).
CLI_BAD_VALUES = {
    "epochs-zero": "memory",
    "optimizer": "train",
    "padding": "memory",
    "no-sources": "download",
    "unknown-key": "download",
    "activation": "train",
    "dropout-one": "memory",
    "learning-rate-zero": "memory",
}


def check_one_line(message: str, fragments: list[str]) -> None:
    """The message is one readable line naming the key, the value and what is allowed."""
    assert "\n" not in message
    assert message.startswith("invalid params: ")
    for fragment in fragments:
        assert fragment in message
    # A person can read it: not the whole config dumped as "the value".
    assert len(message) < 300, message


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_is_one_line_naming_key_and_value(case: str, make_config) -> None:
    override, fragments = BAD_VALUES[case]
    with pytest.raises(errors.ConfigError) as raised:
        make_config(override)
    check_one_line(str(raised.value), fragments)


def break_params_yaml(project: Path) -> None:
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "seed: [42\n")


# case -> (stage, overrides, what to do to the project copy first)
CLI_RUNS = {
    **{case: (stage, [BAD_VALUES[case][0]], None) for case, stage in CLI_BAD_VALUES.items()},
    "valid-config": ("download", ["data.sources=[no-such-mirror]", "data.timeout_seconds=1"], None),
    # download reads no model: a value only the model section would refuse does not stop it.
    "model-not-read": (
        "download",
        ["data.sources=[no-such-mirror]", "data.timeout_seconds=1", "model.layers.0.padding=full"],
        None,
    ),
    "unparseable-params": ("download", [], break_params_yaml),
}


def run_in_copy(project: Path, stage: str, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a stage in a project copy with its own MLflow store path."""
    env = {
        **os.environ,
        "FASHION_CNN_ROOT": str(project),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    env.pop("FASHION_CNN_MIRROR", None)
    return stage_process(stage, *overrides, cwd=project, env=env, timeout=180)


@dataclass(frozen=True)
class CliRun:
    """One stage run in its own project copy."""

    project: Path
    result: subprocess.CompletedProcess[str]

    @property
    def stderr_lines(self) -> list[str]:
        return self.result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory, project_copier) -> dict[str, CliRun]:
    """Every CLI_RUNS case run once in its own project copy, a few at a time to share the start-up cost."""
    base = tmp_path_factory.mktemp("cli")
    projects = {case: project_copier(base / case) for case in CLI_RUNS}
    for case, (_, _, setup) in CLI_RUNS.items():
        if setup:
            setup(projects[case])
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            case: pool.submit(run_in_copy, projects[case], stage, overrides)
            for case, (stage, overrides, _) in CLI_RUNS.items()
        }
        return {case: CliRun(projects[case], future.result()) for case, future in futures.items()}


@pytest.mark.parametrize("case", list(CLI_BAD_VALUES))
def test_bad_value_stops_a_real_stage_with_one_line(case: str, cli_runs) -> None:
    run = cli_runs[case]
    assert run.result.returncode == 1
    assert len(run.stderr_lines) == 1, run.result.stderr
    assert run.stderr_lines[0].startswith("error: ")
    check_one_line(run.stderr_lines[0].removeprefix("error: "), BAD_VALUES[case][1])
    # Validation comes before any work: no data, no MLflow store.
    assert not (run.project / "data").exists()
    assert not (run.project / "mlflow.db").exists()


def test_a_stage_validates_only_the_sections_it_reads(cli_runs) -> None:
    # The same bad padding stops memory (padding case above) but not download, which reads no model:
    # so editing a layer type can neither break nor rerun the data stages.
    run = cli_runs["model-not-read"]
    assert run.result.returncode == 1
    assert run.stderr_lines[-1].startswith("error: could not get train-images-idx3-ubyte.gz")


def test_valid_config_reaches_the_stage_work(cli_runs) -> None:
    # The counterpart of the bad values: a good config passes validation and the stage starts its work,
    # whose own failure (a mirror that is not there) is again one line.
    run = cli_runs["valid-config"]
    assert run.result.returncode == 1
    assert run.stderr_lines[-1].startswith("error: could not get train-images-idx3-ubyte.gz")
    assert "no-such-mirror/train-images-idx3-ubyte.gz does not exist" in run.stderr_lines[-1]
    assert (run.project / "mlflow.db").exists()
    assert list((run.project / "data" / "raw").glob("*")) == []


def test_unparseable_params_yaml_fails_naming_the_file(cli_runs) -> None:
    run = cli_runs["unparseable-params"]
    assert run.result.returncode != 0
    assert "params.yaml" in run.result.stderr
    assert not (run.project / "data").exists()


def test_unparseable_params_yaml_is_one_line(cli_runs) -> None:
    run = cli_runs["unparseable-params"]
    assert len(run.stderr_lines) == 1, run.result.stderr
    assert run.stderr_lines[0].startswith("error: ") and "params.yaml" in run.stderr_lines[0]


def test_unreachable_tracking_server_fails_fast_naming_the_uri(project: Path, monkeypatch) -> None:
    """No long MLflow retry loop: one line naming MLFLOW_TRACKING_URI, before any work."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.stages.download"],
        cwd=project, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and uri in errors[0] and "unreachable" in errors[0]
    assert time.monotonic() - started < 60
    assert not (project / "data").exists()
