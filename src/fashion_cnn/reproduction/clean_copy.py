"""Clean copies of the project for runs that must start from nothing: `make reproduce*` and `make race`.

A clean copy holds the tracked inputs only (no data, no DVC cache, no outputs), so every stage really
runs; its params.yaml is composed from conf/ with the given Hydra overrides, the way
`dvc exp run -S experiment=NAME` composes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from fashion_cnn.errors import FashionCnnError

# What a clean checkout holds that the pipeline needs (src/ for DVC's dependency hashes).
PROJECT_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "conf", "src", ".dvc/config", "reports")


def read_json(path: Path) -> dict:
    """A JSON report, or FashionCnnError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FashionCnnError(f"{path}: missing (the run that writes it did not finish)") from None
    except ValueError as error:
        raise FashionCnnError(f"{path}: not valid JSON ({error})") from None


def read_accuracy(path: Path) -> float:
    """Test accuracy from a metrics file, or FashionCnnError naming the file."""
    try:
        accuracy = json.loads(path.read_text())["test"]["accuracy"]
    except FileNotFoundError:
        raise FashionCnnError(f"{path}: missing, so there is no reported accuracy to reproduce") from None
    except (ValueError, KeyError, TypeError) as error:
        raise FashionCnnError(f"{path}: malformed metrics, expected test.accuracy ({error!r})") from None
    if not isinstance(accuracy, int | float) or not 0.0 <= accuracy <= 1.0:
        raise FashionCnnError(f"{path}: test.accuracy = {accuracy!r} is not a number in [0, 1]")
    return float(accuracy)


def run(command: list[str], cwd: Path, environment: dict[str, str] | None = None) -> None:
    """Run a command in `cwd`, streaming its output; FashionCnnError when it fails.

    In a copy with its own src/, the stages import that code (the code DVC hashes), not the installed one.
    """
    environment = dict(os.environ if environment is None else environment)
    if (cwd / "src" / "fashion_cnn").is_dir():
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(cwd / "src"), environment.get("PYTHONPATH", "")])
        )
    print(f"$ {' '.join(command)}", flush=True)
    if subprocess.run(command, cwd=cwd, env=environment, check=False).returncode != 0:
        raise FashionCnnError(f"`{' '.join(command)}` failed in {cwd}")


def make_clean_copy(root: Path, destination: Path, overrides: list[str]) -> None:
    """Copy the project's tracked inputs (no data, no cache) into a new git + DVC repository whose
    params.yaml is composed from conf/ with `overrides` (none: params.yaml as committed)."""
    for name in PROJECT_FILES:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    if overrides:
        from dvc.utils.hydra import compose_and_dump

        # The same composition `dvc exp run -S experiment=quick` does.
        compose_and_dump(
            destination / "params.yaml", str(destination / "conf"), None, "config", "", overrides
        )
    git = ["git", "-c", "user.name=fashion-cnn", "-c", "user.email=reproduce@localhost"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=destination, check=True)
