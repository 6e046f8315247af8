"""The config contract: conf/ composes to params.yaml; a stage runs with params.yaml, reads its sections."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize, initialize_config_dir
from omegaconf import OmegaConf
from servers import free_port
from stage_runner import StageResult, run_stage, stage_environment

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


def test_real_entry_point_runs_with_the_projects_params_yaml(project: Path) -> None:
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


# ---- a stage validates only what it reads (bad values: test_bad_params.py) ----

# case -> stage overrides; each runs in its own project copy.
CLI_RUNS = {
    "valid-config": ["data.sources=[no-such-mirror]", "data.timeout_seconds=1"],
    # download reads no model: a value only the model section would refuse does not stop it.
    "model-not-read": [
        "data.sources=[no-such-mirror]",
        "data.timeout_seconds=1",
        "model.layers.0.padding=full",
    ],
}


@dataclass(frozen=True)
class CliRun:
    """One download run in its own project copy."""

    project: Path
    result: StageResult

    @property
    def stderr_lines(self) -> list[str]:
        return self.result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory, project_copier) -> dict[str, CliRun]:
    """Every CLI_RUNS case run once through download in its own project copy, side by side."""
    base = tmp_path_factory.mktemp("cli")
    projects = {case: project_copier(base / case) for case in CLI_RUNS}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(CLI_RUNS)) as pool:
        futures = {
            case: pool.submit(
                run_stage, "download", *overrides, cwd=projects[case], timeout=180,
                env=stage_environment(FASHION_CNN_ROOT=str(projects[case]),
                                      MLFLOW_TRACKING_URI=f"sqlite:///{projects[case] / 'mlflow.db'}"),
            )
            for case, overrides in CLI_RUNS.items()
        }  # fmt: skip
        return {case: CliRun(projects[case], future.result()) for case, future in futures.items()}


def test_a_stage_validates_only_the_sections_it_reads(cli_runs) -> None:
    # The same bad padding stops memory (test_bad_params.py's padding case) but not download, which
    # reads no model: so editing a layer type can neither break nor rerun the data stages.
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


def test_unreachable_tracking_server_fails_fast_naming_the_uri(project: Path, monkeypatch) -> None:
    """No long MLflow retry loop: one line naming MLFLOW_TRACKING_URI, before any work."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = run_stage("download", cwd=project, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and uri in errors[0] and "unreachable" in errors[0]
    assert result.seconds < 60
    assert not (project / "data").exists()
