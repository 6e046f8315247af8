"""Start-up side by side: `dvc repro` of a profile from nothing, a baseline commit against the working tree.

`python -m benchmarks.startup` (make bench-startup) exports the baseline (`--baseline`, a git ref) with
`git archive`, then in each of `--rounds` rounds makes a clean copy of each checkout, its params.yaml
composed with `experiment=<profile>`, and times `dvc repro` in it, the two checkouts alternating which goes
first. A stage's wall seconds come from DVC's "Running stage" lines; a stage that prints its own
"stage NAME done in ..." line adds its split into work and start-up. A no-op `dvc repro` is timed in the
candidate's first copy. Writes reports/startup.json (`--output`) and the table between the start-up
markers of docs/performance.md (`--doc`); `--table-only` regenerates the table from the JSON without
measuring. Let nothing else run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import pipeline_timing, startup_table, table
from fashion_cnn.config.cli import run_cli
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.reproduction.clean_copy import make_clean_copy, read_json
from fashion_cnn.utils import machine, paths
from fashion_cnn.utils.atomic import write_json_atomic

# main of 2026-11-26, when the issue asking for this benchmark was filed.
BASELINE_REF = "0e8defc"
# The line a stage prints when it ends (cli.stage_done_line); the baseline's stages do not.
STAGE_DONE = re.compile(
    r"stage (?P<name>\S+) done in (?P<total>\d+(?:\.\d+)?) s: (?P<work>\d+(?:\.\d+)?) s its work, "
    r"(?P<startup>\d+(?:\.\d+)?) s starting \(Python, imports, config\)"
)


def parse_stage_done(line: str) -> dict[str, Any] | None:
    """A stage's own split of its time from its "stage NAME done in" line; None for any other line."""
    match = STAGE_DONE.fullmatch(line.strip())
    if match is None:
        return None
    return {
        "name": match["name"],
        "total_seconds": float(match["total"]),
        "work_seconds": float(match["work"]),
        "startup_seconds": float(match["startup"]),
    }


def stage_splits(lines: list[tuple[float, str]]) -> dict[str, dict[str, float] | None]:
    """For each stage DVC ran, the split its "done in" line gave (None where it printed none).

    A line belongs to the stage DVC was running when it arrived (its printed name where none was).
    """
    splits: dict[str, dict[str, float] | None] = {}
    current = None
    for _, line in lines:
        if started := pipeline_timing.STAGE_STARTED.match(line):
            current = started.group(1)
            splits[current] = None
        elif (done := parse_stage_done(line)) is not None:
            name = done.pop("name")
            splits[current or name] = done
    return splits


def run_record(
    checkout: str, round_index: int, run: pipeline_timing.ReproRun, train_seconds: float | None
) -> dict[str, Any]:
    """What one timed `dvc repro` of a checkout measured, as reports/startup.json holds it."""
    starts = run.starts
    return {
        "checkout": checkout,
        "round": round_index,
        "total_seconds": run.seconds,
        "dvc_start_seconds": starts[0][1] if starts else run.seconds,
        "stages_run": [name for name, _ in starts],
        "stage_seconds": pipeline_timing.stage_seconds(starts, run.seconds),
        "stage_split": stage_splits(run.lines),
        "train_seconds": train_seconds,
    }


def read_train_seconds(workdir: Path, since: float) -> float | None:
    """The train stage's `train_seconds` from the copy's reports/train/metrics.json, if this run wrote it."""
    metrics_file = workdir / "reports" / "train" / "metrics.json"
    # The copy also holds the checkout's committed file: only one rewritten since `since` counts.
    if not metrics_file.is_file() or metrics_file.stat().st_mtime < since:
        return None
    value = read_json(metrics_file).get("train_seconds")
    return float(value) if isinstance(value, int | float) else None


def git(root: Path, *arguments: str) -> str:
    """The output of `git -C root ARGUMENTS`, stripped; FashionCnnError when git fails."""
    result = subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FashionCnnError(f"`git {' '.join(arguments)}` failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def export_ref(root: Path, ref: str, destination: Path) -> str:
    """Extract the files of commit `ref` into `destination` (`git archive | tar -x`); its full hash."""
    try:
        commit = git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except FashionCnnError:
        raise FashionCnnError(f"--baseline {ref!r}: not a commit of the repository {root}") from None
    destination.mkdir(parents=True)
    with subprocess.Popen(["git", "-C", str(root), "archive", commit], stdout=subprocess.PIPE) as archive:
        untar = subprocess.run(["tar", "-x", "-C", str(destination)], stdin=archive.stdout, check=False)
    if archive.returncode != 0 or untar.returncode != 0:
        raise FashionCnnError(f"could not export {ref} ({commit}) into {destination} with git archive | tar")
    return commit


def candidate_identity(root: Path) -> dict[str, Any]:
    """The working tree's HEAD and whether tracked files differ from it."""
    changes = git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "root": str(root),
        "commit": git(root, "rev-parse", "HEAD"),
        "working_tree_changes": bool(changes),
    }


def round_order(round_index: int) -> tuple[str, ...]:
    """Which checkout goes first: the baseline in even rounds, the candidate in odd ones (drift hits both)."""
    checkouts = startup_table.CHECKOUTS
    return checkouts if round_index % 2 == 0 else checkouts[::-1]


def check_profile(checkout_roots: dict[str, Path], profile: str) -> None:
    """FashionCnnError unless every checkout has the preset conf/experiment/<profile>.yaml."""
    for checkout, root in checkout_roots.items():
        presets = root / "conf" / "experiment"
        if not (presets / f"{profile}.yaml").is_file():
            known = ", ".join(sorted(path.stem for path in presets.glob("*.yaml"))) or "none"
            raise FashionCnnError(
                f"--profile {profile!r}: the {checkout} has no such preset (it has: {known})"
            )


def measure_run(
    options: argparse.Namespace, checkout: str, checkout_root: Path, round_index: int, with_noop: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One clean copy of `checkout_root`, `dvc repro` in it timed; with_noop: then the no-op repros too."""
    workdir = options.scratch / f"{checkout}-round{round_index + 1}"
    log_path = options.scratch / f"{workdir.name}.log"
    try:
        make_clean_copy(checkout_root, workdir, [f"experiment={options.profile}"])
        print(f"[{checkout} round {round_index + 1}] dvc repro in {workdir} (log: {log_path})", flush=True)
        since = time.time()
        run = pipeline_timing.timed_repro(workdir, log_path)
        record = run_record(checkout, round_index, run, read_train_seconds(workdir, since))
        noop = None
        if with_noop:
            noop = pipeline_timing.time_noop(workdir, log_path)
            target = pipeline_timing.NOOP_TARGET_SECONDS
            noop.update(target_seconds=target, meets_target=noop["median"] < target)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return record, noop


def run_benchmark(options: argparse.Namespace) -> dict[str, Any]:
    """Measure both checkouts `options.rounds` times; the report, written to options.output as it grows."""
    started = time.perf_counter()
    checkout_roots = {"baseline": options.scratch / "baseline", "candidate": options.root}
    baseline_commit = export_ref(options.root, options.baseline, checkout_roots["baseline"])
    check_profile(checkout_roots, options.profile)
    report: dict[str, Any] = {
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": machine.hardware(),
        "versions": machine.versions(),
        "settings": {
            "profile": options.profile,
            "overrides": [f"experiment={options.profile}"],
            "rounds": options.rounds,
            "noop_repeats": pipeline_timing.NOOP_REPEATS,
            # Anything else running (a load near the core count) slows both checkouts: check this first.
            "load_average_at_start": os.getloadavg(),
        },
        "checkouts": {
            "baseline": {"ref": options.baseline, "commit": baseline_commit},
            "candidate": candidate_identity(options.root),
        },
        "runs": [],
        "noop": None,
    }

    def publish(**measured: Any) -> None:
        report.update(measured, elapsed_seconds=time.perf_counter() - started)
        report["summary"] = startup_table.summarise(report["runs"])
        write_json_atomic(options.output, report)

    for round_index in range(options.rounds):
        for checkout in round_order(round_index):
            with_noop = checkout == "candidate" and round_index == 0
            record, noop = measure_run(options, checkout, checkout_roots[checkout], round_index, with_noop)
            report["runs"].append(record)
            print(startup_table.run_line(record), flush=True)
            publish(**({"noop": noop} if noop else {}))
    publish(complete=True)
    return report


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE_REF, help=f"git ref to compare with ({BASELINE_REF})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing both checkouts (3)")
    parser.add_argument("--profile", default="quick", help="preset of conf/experiment/ to run (quick)")
    parser.add_argument("--output", type=Path, help="report file (default: reports/startup.json)")
    parser.add_argument("--doc", type=Path, help="page whose start-up markers to fill (docs/performance.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (copies, dvc logs)")
    parser.add_argument(
        "--table-only", action="store_true", help="only regenerate --doc's table from the --output report"
    )
    options = parser.parse_args(argv)
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.startup`."""
    options = parse_arguments(argv)
    options.root = paths.find_root()
    options.output = options.output or paths.project_paths(options.root).reports_dir / "startup.json"
    doc = options.doc or table.default_doc_path()

    def regenerate() -> str:
        report = table.read_report(options.output, "make bench-startup")
        startup_table.write_doc(doc, report)
        updated = f"updated the start-up table in {doc} from {options.output}"
        return f"{startup_table.format_report(report)}\n\n{updated}"

    if options.table_only:
        return run_cli(regenerate)

    options.scratch = Path(tempfile.mkdtemp(prefix="fashion-cnn-startup-"))

    def measure() -> str:
        report = run_benchmark(options)
        startup_table.write_doc(doc, report)
        return (
            f"{startup_table.format_report(report)}\n\nwrote {options.output} and the table in {doc} "
            f"in {report['elapsed_seconds'] / 60:.1f} min"
        )

    try:
        return run_cli(measure)
    finally:
        if options.keep:
            print(f"kept the baseline export, the copies and the dvc logs in {options.scratch}")
        else:
            shutil.rmtree(options.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
