"""Shared fixtures: temp project copies, synthetic Fashion-MNIST files, real HTTP and MLflow servers."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize
from PIL import Image
from servers import VENV_BIN, HttpMirror, MirrorServer, MlflowServer, running_mlflow_server

from fashion_cnn.config import cli, schema
from fashion_cnn.data import fetch, idx
from fashion_cnn.data.idx import encode_idx
from fashion_cnn.stages import prepare
from fashion_cnn.training.config import ProjectConfig

# Session fixtures of two tiny training runs on a real tracking server (test_mlflow_server.py,
# test_registry.py): defined once, so the runs are trained once per session.
pytest_plugins = ["tracked_runs"]

REPO_ROOT = Path(__file__).resolve().parents[1]

# What a checkout needs for the stages and for dvc: code is copied only so dvc.yaml's deps exist,
# the stages import the installed package.
PROJECT_FILES = ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore")
PROJECT_DIRS = ("conf", "src")

# ---- what this machine must have: missing, a test skips, and under CI fails ----

# GitHub Actions sets CI=true; .ci/run sets it too.
CI_ENV_VAR = "CI"
CI_VALUES = ("true", "1")


def under_ci() -> bool:
    """True when $CI says this is a CI run, where every check must really run."""
    return os.environ.get(CI_ENV_VAR, "").strip().lower() in CI_VALUES


def missing_requirement(what: str) -> NoReturn:
    """Skip the running test because this machine lacks `what` (what and how to install it).

    Under CI the test fails instead: a green CI must not hide a check that did not run.
    """
    if under_ci():
        ci_value = os.environ[CI_ENV_VAR]
        pytest.fail(
            f"{what}; {CI_ENV_VAR}={ci_value}, so a missing requirement fails instead of skipping",
            pytrace=False,
        )
    pytest.skip(what)


# The four original Fashion-MNIST files (the names the download stage writes to data/raw): from
# Debian's package dataset-fashion-mnist, or any folder holding them named by $FASHION_CNN_TEST_DATASET
# (CI without that package points it at the download stage's data/raw).
DATASET_ENV_VAR = "FASHION_CNN_TEST_DATASET"
DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASET_DIR = Path(os.environ.get(DATASET_ENV_VAR) or DEBIAN_DATASET_DIR)
DATASET_FILES = tuple(f"{item.name}.gz" for item in fetch.FILES)
HAS_DATASET = all((DATASET_DIR / name).is_file() for name in DATASET_FILES)
NO_DATASET = (
    f"needs the real Fashion-MNIST files ({', '.join(DATASET_FILES)}) in {DATASET_DIR}: "
    f"`sudo apt-get install dataset-fashion-mnist` installs them in {DEBIAN_DATASET_DIR}, or set "
    f"{DATASET_ENV_VAR} to a folder holding them (e.g. data/raw after `.venv/bin/dvc repro download`)"
)


@pytest.fixture(scope="session")
def real_dataset() -> Path:
    """The folder of the real Fashion-MNIST files; a missing requirement where there is none.

    Session-scoped, so that it is checked before any module fixture that would read the files.
    """
    if not HAS_DATASET:
        missing_requirement(NO_DATASET)
    return DATASET_DIR


# For a test or a module (pytestmark) that reads DATASET_DIR.
needs_dataset = pytest.mark.usefixtures("real_dataset")


def tiny_arrays(
    train_count: int = 800, test_count: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first training and test images of real Fashion-MNIST, or learnable synthetic ones without it.

    Synthetic: class k is a bright bar at rows 2k+4..2k+7 over noise.
    """
    if HAS_DATASET:
        return (
            idx.load_images(DATASET_DIR / "train-images-idx3-ubyte.gz")[:train_count],
            idx.load_labels(DATASET_DIR / "train-labels-idx1-ubyte.gz")[:train_count],
            idx.load_images(DATASET_DIR / "t10k-images-idx3-ubyte.gz")[:test_count],
            idx.load_labels(DATASET_DIR / "t10k-labels-idx1-ubyte.gz")[:test_count],
        )
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 10, size=train_count + test_count).astype(np.uint8)
    images = generator.integers(0, 60, size=(train_count + test_count, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4 : 2 * label + 8, 4:24] = 230
    return images[:train_count], labels[:train_count], images[train_count:], labels[train_count:]


# ---- isolation ----

# Started in the background by a non-interactive shell (`make test &`), the tests inherit SIGINT
# ignored, and so would every stage they start. Several tests send SIGINT on purpose (Ctrl-C), so
# give this process Python's handler back; the processes it starts then get the default action.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _forget_mlflow_experiment() -> None:
    """Drop the experiment an in-process mlflow.set_experiment() left (module state, $MLFLOW_EXPERIMENT_ID).

    A fresh store has no such experiment. MLflow has no public way to forget it.
    """
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every test off the repo's mlflow.db and out of the developer's mirror and root settings."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # An in-process mlflow.set_tracking_uri() outlives its test; the variable alone would not win.
    mlflow.set_tracking_uri(store)
    _forget_mlflow_experiment()
    monkeypatch.delenv(fetch.MIRROR_ENV_VAR, raising=False)
    monkeypatch.delenv("FASHION_CNN_ROOT", raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    yield
    # Leave no global MLflow state behind for the next module-scoped fixture, which runs before
    # this fixture's next setup (the damaged-files template trained into another test's store).
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None is MLflow's "not set"
    _forget_mlflow_experiment()


# ---- temp copies of the project ----


def copy_project(destination: Path, *, with_dvc: bool = False) -> Path:
    """Copy params, dvc.yaml, conf/ and src/ to `destination`; with_dvc adds git + dvc init and a commit."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, destination / name)
    for name in PROJECT_DIRS:
        shutil.copytree(
            REPO_ROOT / name,
            destination / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    if with_dvc:
        _run_command(["git", "init", "-q"], destination)
        _run_command([str(VENV_BIN / "dvc"), "init", "-q"], destination)
        # The repo's own DVC settings (Hydra composition on, autostage).
        shutil.copy2(REPO_ROOT / ".dvc" / "config", destination / ".dvc" / "config")
        _git_commit(destination, "copy of the project")
    return destination


def _run_command(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, raising with its output when it fails."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _git_commit(project: Path, message: str) -> None:
    """Commit everything in a temp project (a fixed identity, so no global git config is needed)."""
    identity = ["-c", "user.name=fashion-cnn tests", "-c", "user.email=tests@fashion-cnn.invalid"]
    _run_command(["git", "add", "-A"], project)
    _run_command(["git", *identity, "commit", "-q", "--no-verify", "-m", message], project)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout the tests run from (holds the committed params.yaml, dvc.yaml and conf/)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def project_copier() -> Callable[..., Path]:
    """copy_project for fixtures of any scope: copier(destination, with_dvc=False) -> destination."""
    return copy_project


@pytest.fixture(scope="session")
def run_command() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_command(args, cwd, timeout=300): run to completion; a failure fails the test, with its output."""
    return _run_command


@pytest.fixture(scope="session")
def git_commit() -> Callable[[Path, str], None]:
    """git_commit(project, message): commit everything in a temp project."""
    return _git_commit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp copy of the project (no git/dvc) as the cwd and $FASHION_CNN_ROOT; MLflow in tmp_path."""
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("FASHION_CNN_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def dvc_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Like `project`, plus `git init`, `dvc init`, the repo's .dvc/config and a first commit."""
    root = copy_project(tmp_path / "project", with_dvc=True)
    monkeypatch.setenv("FASHION_CNN_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def png_check() -> Callable[..., None]:
    """assert_png(path): a real PNG whose pixel size is one a person can read on a screen."""

    def assert_png(path: Path, min_side: int = 300, max_side: int = 4000) -> None:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
        with Image.open(path) as image:
            width, height = image.size
            image.load()
        assert min_side <= min(width, height) and max(width, height) <= max_side, (path.name, width, height)

    return assert_png


# ---- configs composed from the real params.yaml ----


@pytest.fixture
def make_config() -> Callable[..., ProjectConfig]:
    """Compose and validate what a stage runs with: params.yaml (the repo's or `root`'s) + overrides."""

    def compose_config(*overrides: str, root: Path = REPO_ROOT) -> ProjectConfig:
        cli.register_stage_config(root)
        with initialize(version_base="1.3", config_path=None):
            composed = compose(cli.STAGE_CONFIG_NAME, overrides=list(overrides))
        return ProjectConfig.from_params(schema.to_plain_dict(composed))

    return compose_config


# ---- synthetic Fashion-MNIST files ----


@dataclass
class SyntheticRaw:
    """Four small gzipped IDX files in `directory`, the arrays in them and their fetch.FILES entries."""

    directory: Path
    # Keyed by the raw split prefix: "train" or "t10k"; images (count, 28, 28) uint8, labels (count,).
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    # The .gz payloads by file name without .gz, e.g. "train-images-idx3-ubyte".
    gz_bytes: dict[str, bytes] = field(default_factory=dict)
    files: tuple[fetch.ExpectedFile, ...] = ()

    def path(self, name: str) -> Path:
        """The .gz path of a file name such as 'train-labels-idx1-ubyte'."""
        return self.directory / f"{name}.gz"


def make_synthetic_raw(directory: Path, n_train: int = 120, n_test: int = 30, seed: int = 0) -> SyntheticRaw:
    """Write random images (pixel (0, 0) always black) and labels 0..9 in Fashion-MNIST's file layout."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images[prefix] = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        # A constant pixel, as the dataset's borders are: its std is 0, so only the epsilon remains.
        images[prefix][:, 0, 0] = 0
        labels[prefix] = rng.integers(0, 10, size=count, dtype=np.uint8)
    raw = SyntheticRaw(directory, images, labels)
    directory.mkdir(parents=True, exist_ok=True)
    expected = []
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", images[prefix]), ("labels-idx1", labels[prefix])):
            name = f"{prefix}-{kind}-ubyte"
            idx_bytes = encode_idx(array)
            raw.gz_bytes[name] = gzip.compress(idx_bytes, mtime=0)
            raw.path(name).write_bytes(raw.gz_bytes[name])
            expected.append(fetch.ExpectedFile(name, hashlib.sha256(idx_bytes).hexdigest(), len(idx_bytes)))
    # Same order as fetch.FILES.
    order = [item.name for item in fetch.FILES]
    raw.files = tuple(sorted(expected, key=lambda item: order.index(item.name)))
    return raw


@pytest.fixture
def synthetic_raw(tmp_path: Path) -> SyntheticRaw:
    """120 train and 30 test synthetic images in tmp_path/raw (use make_synthetic_raw for other sizes)."""
    return make_synthetic_raw(tmp_path / "raw")


@pytest.fixture
def synthetic_prepared(tmp_path: Path, synthetic_raw: SyntheticRaw, make_config) -> Path:
    """tmp_path/prepared from synthetic_raw by the real prepare step: 100 train, 20 validation, 30 test."""
    data_config = make_config("data.validation_size=20").data
    prepared_dir = tmp_path / "prepared"
    prepare.prepare(synthetic_raw.directory, prepared_dir, data_config)
    return prepared_dir


# ---- real servers on 127.0.0.1 (tests/servers.py) ----


@pytest.fixture
def http_mirror() -> Iterator[HttpMirror]:
    """A real threaded HTTP server on 127.0.0.1 serving good, missing, corrupt, truncated and slow files."""
    server = MirrorServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield HttpMirror(server)
    finally:
        # Wake slow handlers so shutdown does not wait for them.
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def mlflow_server_factory() -> Callable[[Path], contextlib.AbstractContextManager[MlflowServer]]:
    """running_mlflow_server(directory): a server of the test's own, e.g. one the test stops."""
    return running_mlflow_server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real `mlflow server` per test module (starting one takes seconds), with a temp store."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


# ---- a small filesystem that fills up ----


@pytest.fixture
def small_tmpfs() -> Iterator[Callable[..., None]]:
    """mount(folder, size, read_only=False): a tmpfs of `size` (e.g. "64k") over `folder`, owned by this
    user, unmounted after; read_only mounts it empty and read-only (a read-only disk: chmod does not
    stop root).

    Mounting needs root, or passwordless sudo, and the mount permission (a container needs
    CAP_SYS_ADMIN); where it is refused, a missing requirement.
    """
    mounted: list[tuple[list[str], Path]] = []

    def mount(folder: Path, size: str, read_only: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # Not root: sudo -n, which fails at once instead of asking for a password.
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        options = ("ro," if read_only else "") + f"size={size},uid={os.getuid()},gid={os.getgid()}"
        command = [*prefix, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except FileNotFoundError as error:
            reason = f"{error.strerror}: {error.filename}"
        else:
            if result.returncode == 0:
                mounted.append((prefix, folder))
                return
            reason = result.stderr.strip() or f"exit code {result.returncode}"
        missing_requirement(
            f"needs to mount a tmpfs (`{' '.join(command)}` failed: {reason}): run the tests as root "
            f"or with passwordless sudo, where mounting is allowed (a container needs CAP_SYS_ADMIN)"
        )

    yield mount
    for prefix, folder in mounted:
        subprocess.run([*prefix, "umount", "--lazy", str(folder)], check=False)
