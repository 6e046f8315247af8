"""Reproduce the reported accuracy: rerun the pipeline in a clean copy and compare with the committed metrics.

`python -m fashion_cnn.tools.reproduce --profile default` (make reproduce) reruns the committed params;
`--profile quick` (make reproduce-quick) reruns them with the `experiment=quick` preset. The copy
has no outputs and no DVC cache, so every stage really runs; the check cannot pass vacuously.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fashion_cnn import paths
from fashion_cnn.atomic import write_text_atomic
from fashion_cnn.cli import run_cli
from fashion_cnn.errors import FashionCnnError

# Each profile: the Hydra overrides composed into params.yaml, and where its reported metrics live.
PROFILES = {
    "default": {"overrides": [], "baseline": Path("reports/metrics.json")},
    "quick": {"overrides": ["experiment=quick"], "baseline": Path("reports/quick/metrics.json")},
    # Issue #10's 15-minute CPU recipe; recording it is the finalist's one look at the test set.
    "cpu_15min": {"overrides": ["experiment=cpu_15min"], "baseline": Path("reports/recipe/metrics.json")},
}
# What a clean checkout holds that the pipeline needs (src/ for DVC's dependency hashes).
PROJECT_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "conf", "src", ".dvc/config", "reports")


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


def compare(baseline: float, reproduced: float, tolerance: float) -> str:
    """One line comparing the two accuracies; FashionCnnError when they differ by more than tolerance."""
    difference = reproduced - baseline
    line = (
        f"test accuracy: reported {baseline:.4f}, reproduced {reproduced:.4f}, "
        f"difference {difference * 100:+.2f} points (tolerance {tolerance * 100:.2f})"
    )
    if abs(difference) > tolerance:
        raise FashionCnnError(f"{line}: NOT reproduced")
    return line + ": reproduced"


def run(command: list[str], cwd: Path) -> None:
    """Run a command in `cwd`, streaming its output; FashionCnnError when it fails."""
    print(f"$ {' '.join(command)}", flush=True)
    if subprocess.run(command, cwd=cwd, check=False).returncode != 0:
        raise FashionCnnError(f"`{' '.join(command)}` failed in {cwd}")


def make_clean_copy(root: Path, destination: Path, profile: str) -> None:
    """Copy the project's tracked inputs (no data, no cache) into a new git + DVC repository."""
    for name in PROJECT_FILES:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    settings = PROFILES[profile]
    if settings["overrides"]:
        from dvc.utils.hydra import compose_and_dump

        # The same composition `dvc exp run -S experiment=quick` does.
        compose_and_dump(
            destination / "params.yaml", str(destination / "conf"), None, "config", "", settings["overrides"]
        )
        if (root / settings["baseline"]).is_file():
            shutil.copy2(root / settings["baseline"], destination / "reports" / "metrics.json")
    git = ["git", "-c", "user.name=fashion-cnn", "-c", "user.email=reproduce@localhost"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=destination, check=True)


def reproduce(root: Path, profile: str, tolerance: float, record: bool, keep: bool) -> str:
    """Rerun the whole pipeline in a clean copy; compare (or, with record, store) the result."""
    baseline_path = root / PROFILES[profile]["baseline"]
    baseline = None if record else read_accuracy(baseline_path)
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-reproduce-{profile}-"))
    try:
        make_clean_copy(root, workdir, profile)
        started = time.time()
        run(["dvc", "repro"], workdir)
        produced = workdir / "reports" / "metrics.json"
        if produced.stat().st_mtime < started:
            raise FashionCnnError(f"{produced} was not rewritten by this run: nothing was reproduced")
        reproduced = read_accuracy(produced)
        if record:
            write_text_atomic(baseline_path, produced.read_text())
            return f"recorded test accuracy {reproduced:.4f} in {baseline_path}"
        run(["dvc", "metrics", "diff", "--all"], workdir)
        return compare(baseline, reproduced, tolerance)
    finally:
        if keep:
            print(f"kept the reproduction in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.reproduce`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="largest allowed |reproduced - reported| test accuracy (0.005 = 0.5 points)",
    )
    parser.add_argument(
        "--record", action="store_true", help="store the reproduced metrics as the profile's reported ones"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy for inspection")
    arguments = parser.parse_args(argv)
    if not 0 <= arguments.tolerance < 1:
        parser.error(f"--tolerance = {arguments.tolerance}: must be in [0, 1)")
    return run_cli(
        lambda: reproduce(
            paths.find_root(), arguments.profile, arguments.tolerance, arguments.record, arguments.keep
        )
    )


if __name__ == "__main__":
    sys.exit(main())
