"""Reproduce the reported accuracy: rerun the pipeline in a clean copy and compare with the committed metrics.

`python -m fashion_cnn.tools.reproduce --profile default` (make reproduce) reruns the committed params;
`--profile quick` (make reproduce-quick) reruns them with the `experiment=quick` preset, `--profile recipe`
(make reproduce-recipe) with the race winner named in conf/race.yaml. The copy
has no outputs and no DVC cache, so every stage really runs; the check cannot pass vacuously.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fashion_cnn.config.cli import run_cli
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.reproduction import race_report
from fashion_cnn.reproduction.clean_copy import make_clean_copy, read_accuracy, run
from fashion_cnn.utils import paths
from fashion_cnn.utils.atomic import write_text_atomic

# Each profile: the Hydra overrides composed into params.yaml, and where its reported metrics live.
# The recipe profile is the race winner named in conf/race.yaml; recording it is its one look at the
# test set.
BASELINES = {
    "default": Path("reports/metrics.json"),
    "quick": Path("reports/quick/metrics.json"),
    "recipe": Path("reports/recipe/metrics.json"),
}


def profile_overrides(root: Path, profile: str) -> list[str]:
    """The overrides that turn params.yaml into the profile's params."""
    if profile == "quick":
        return ["experiment=quick"]
    if profile == "recipe":
        return [f"experiment={race_report.load_race_config(root).winner}"]
    return []


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


def reproduce(root: Path, profile: str, tolerance: float, record: bool, keep: bool) -> str:
    """Rerun the whole pipeline in a clean copy; compare (or, with record, store) the result."""
    baseline_path = root / BASELINES[profile]
    baseline = None if record else read_accuracy(baseline_path)
    workdir = Path(tempfile.mkdtemp(prefix=f"fashion-cnn-reproduce-{profile}-"))
    try:
        overrides = profile_overrides(root, profile)
        print(f"profile {profile}: params.yaml composed with {' '.join(overrides) or 'no overrides'}")
        make_clean_copy(root, workdir, overrides)
        if overrides and baseline_path.is_file():
            # The profile's reported metrics, for `dvc metrics diff` against the reproduction.
            shutil.copy2(baseline_path, workdir / "reports" / "metrics.json")
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
    parser.add_argument("--profile", choices=sorted(BASELINES), default="default")
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
