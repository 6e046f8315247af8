"""Training throughput of the train stage vs the seed's plain Keras code, plus pipeline timings.

`python -m benchmarks.train_throughput` (make bench) runs, in rounds, one fresh process per variant
(benchmarks.workers): the seed notebook's code, the train stage's code path with params.yaml as it
is, and the same with one speed setting changed. Every round runs all variants in the same order,
so the seed and the project alternate and each variant's ratio compares runs minutes apart. Then it
runs the whole train stage once (peak memory, time to the first step) and reproduces the quick
profile with `dvc repro` (time per stage, no-op repro). Everything goes to reports/benchmarks.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import default_report_path, machine, pipeline_timing
from benchmarks.workers import SEED_BATCH_SIZE, SPAWNED_AT_ENV_VAR, compose_config
from fashion_cnn import download, paths, prepare
from fashion_cnn.atomic import write_json_atomic
from fashion_cnn.config import FashionCnnError
from fashion_cnn.model import count_parameters
from fashion_cnn.stage import run_cli

# The folder holding the `benchmarks` package: workers import it from there.
BENCHMARKS_PARENT = Path(__file__).resolve().parents[1]
# One worker never needs this long; a hung one is killed and recorded as failed.
RUN_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class Variant:
    """One way of training the seed architecture: which code, which overrides, which environment."""

    name: str
    description: str
    kind: str  # "seed" (the notebook's code) or "project" (the train stage's fit)
    overrides: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    # Run only on CPUs with any of these /proc/cpuinfo flags (empty: always).
    needs_any_flag: tuple[str, ...] = ()


SEED = Variant("seed", "the seed notebook's plain Keras code (reference)", "seed")
PROJECT = Variant("project", "the train stage's fit with params.yaml as committed", "project")
CPU_VARIANTS = (
    SEED,
    PROJECT,
    # The seed recipe's epoch is 1,719 steps (55,000 images / 32): 3 and 9 are the values that divide it.
    Variant(
        "steps_per_execution_3", "train.steps_per_execution=3", "project", ("train.steps_per_execution=3",)
    ),
    Variant(
        "steps_per_execution_9", "train.steps_per_execution=9", "project", ("train.steps_per_execution=9",)
    ),
    # Keras runs no XLA under deterministic ops: compare this with `nondeterministic`, not `project`.
    Variant(
        "jit_compile",
        "train.jit_compile=on with train.deterministic=false (XLA on the CPU)",
        "project",
        ("train.jit_compile=on", "train.deterministic=false"),
    ),
    Variant(
        "inter_op_1",
        "train.inter_op_threads=1 (one op at a time, each on every core)",
        "project",
        ("train.inter_op_threads=1",),
    ),
    Variant(
        "onednn_off",
        "TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's default on x86 Linux, which the others use, is 1)",
        "project",
        environment={"TF_ENABLE_ONEDNN_OPTS": "0"},
    ),
    Variant(
        "nondeterministic",
        "train.deterministic=false (the price of deterministic ops)",
        "project",
        ("train.deterministic=false",),
    ),
    Variant(
        "mixed_bfloat16",
        "train.mixed_precision=mixed_bfloat16",
        "project",
        ("train.mixed_precision=mixed_bfloat16",),
        needs_any_flag=machine.BFLOAT16_FLAGS,
    ),
)
GPU_VARIANTS = (
    SEED,
    PROJECT,
    Variant(
        "gpu_fast",
        "mixed_float16, steps_per_execution=9, XLA off, deterministic ops",
        "project",
        ("train.mixed_precision=mixed_float16", "train.steps_per_execution=9"),
    ),
    # XLA needs nondeterministic ops (Keras turns it off under determinism).
    Variant(
        "gpu_fast_xla",
        "mixed_float16, steps_per_execution=9, XLA on, nondeterministic ops",
        "project",
        (
            "train.mixed_precision=mixed_float16",
            "train.steps_per_execution=9",
            "train.jit_compile=on",
            "train.deterministic=false",
        ),
    ),
)
PROFILES = {"cpu": CPU_VARIANTS, "gpu": GPU_VARIANTS}


@dataclass(frozen=True)
class Settings:
    """What to measure and how much (see the command-line help for each)."""

    root: Path
    scratch: Path
    variants: tuple[Variant, ...] = CPU_VARIANTS
    steps: int = 32
    warmup: int = 4
    repeats: int = 3
    prepared_dir: Path | None = None
    stage: bool = True
    pipeline: bool = True
    pipeline_profile: str = "quick"
    noop_repeats: int = 3


def rounded_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return math.ceil(value / multiple) * multiple


def resolve_prepared_dir(settings: Settings) -> tuple[Path, str]:
    """The prepared arrays to train on: given, data/prepared, else made now by the project's own code."""
    if settings.prepared_dir is not None:
        return settings.prepared_dir, "given on the command line"
    project_prepared = paths.ProjectPaths(settings.root).prepared_dir
    if (project_prepared / "train.npz").is_file():
        return project_prepared, "data/prepared"
    print("[data] no data/prepared: preparing it with fashion_cnn.download and prepare", flush=True)
    data_config = compose_config(settings.root, []).data
    raw_dir = settings.scratch / "raw"
    download.download(download.source_list(list(data_config.sources)), data_config.timeout_seconds, raw_dir)
    prepared_dir = settings.scratch / "prepared"
    prepare.prepare(raw_dir, prepared_dir, data_config)
    return prepared_dir, "prepared from data.sources by fashion_cnn.prepare"


def count_training_images(prepared_dir: Path) -> int:
    """Images in train.npz (reads only the labels)."""
    train_file = prepared_dir / "train.npz"
    if not train_file.is_file():
        raise FashionCnnError(f"{train_file}: missing (run `dvc repro prepare` or pass --prepared-dir)")
    with np.load(train_file) as archive:
        return len(archive["labels"])


def worker_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment, the `benchmarks` package importable, and the variant's settings."""
    environment = dict(os.environ)
    environment.pop("FASHION_CNN_ROOT", None)
    environment["PYTHONPATH"] = os.pathsep.join(
        item for item in (str(BENCHMARKS_PARENT), environment.get("PYTHONPATH", "")) if item
    )
    environment.update(extra)
    return environment


def run_worker(
    arguments: list[str], environment: dict[str, str], cwd: Path, log_path: Path
) -> tuple[int, float, float]:
    """Run `python -m benchmarks.workers ARGUMENTS`; return (exit code, peak RSS in MB, wall seconds).

    The peak RSS comes from the kernel (wait4's rusage of this one child), not from the child itself.
    """
    command = [sys.executable, "-m", "benchmarks.workers", *arguments]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        environment = {**environment, SPAWNED_AT_ENV_VAR: repr(time.time())}
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(RUN_TIMEOUT_SECONDS, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, time.perf_counter() - started


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The last lines of a worker's log, for the report of a failed run."""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Plan:
    """A variant with its warm-up and timed steps rounded to whole executions."""

    variant: Variant
    warmup: int
    steps: int
    batch_size: int


def plan_variants(
    settings: Settings, cpu_flags: dict[str, bool], training_images: int
) -> tuple[list[Plan], dict[str, str]]:
    """Compose and check every variant's config before spending minutes; skip the inapplicable ones."""
    plans, not_applicable = [], {}
    for variant in settings.variants:
        if variant.needs_any_flag and not any(cpu_flags.get(flag) for flag in variant.needs_any_flag):
            not_applicable[variant.name] = (
                f"not applicable: the CPU has none of {', '.join(variant.needs_any_flag)}"
            )
            continue
        variant_config = compose_config(settings.root, list(variant.overrides))
        per_execution = variant_config.train.steps_per_execution if variant.kind == "project" else 1
        batch_size = variant_config.train.batch_size if variant.kind == "project" else SEED_BATCH_SIZE
        if batch_size != SEED_BATCH_SIZE:
            raise FashionCnnError(
                f"variant {variant.name}: train.batch_size = {batch_size}, but the comparison with "
                f"the seed needs its batch of {SEED_BATCH_SIZE}"
            )
        plan = Plan(
            variant,
            rounded_up(max(settings.warmup, per_execution), per_execution),
            rounded_up(settings.steps, per_execution),
            batch_size,
        )
        # The step after the timed ones must start (its start closes the window): one image more.
        needed = (plan.warmup + plan.steps) * batch_size + 1
        if needed > training_images:
            raise FashionCnnError(
                f"variant {variant.name}: {plan.warmup} warm-up + {plan.steps} timed steps of "
                f"{batch_size} need {needed} training images, the prepared data has {training_images}"
            )
        plans.append(plan)
    return plans, not_applicable


def measure_throughput(
    settings: Settings,
    plans: list[Plan],
    prepared_dir: Path,
    on_round: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    """`repeats` rounds of one fresh process per variant, in the same order every round."""
    runs: list[dict[str, Any]] = []
    for round_index in range(settings.repeats):
        round_started = time.perf_counter()
        for plan in plans:
            variant = plan.variant
            tag = f"{variant.name}-{round_index}"
            result_path = settings.scratch / f"{tag}.json"
            log_path = settings.scratch / f"{tag}.log"
            arguments = [variant.kind, "--result", str(result_path), "--prepared", str(prepared_dir)]
            arguments += ["--warmup", str(plan.warmup), "--steps", str(plan.steps)]
            if variant.kind == "project":
                arguments += ["--root", str(settings.root)]
                arguments += [f"--override={item}" for item in variant.overrides]
            code, peak_rss_mb, wall = run_worker(
                arguments, worker_environment(variant.environment), settings.scratch, log_path
            )
            run = {"variant": variant.name, "round": round_index, "wall_seconds": wall}
            if code == 0 and result_path.is_file():
                run.update(json.loads(result_path.read_text()))
                run["peak_rss_mb"] = peak_rss_mb
                print(
                    f"[throughput] round {round_index + 1}/{settings.repeats} {variant.name:<24} "
                    f"{run['images_per_second']:7.1f} images/s  ({run['seconds_per_step'] * 1000:.0f} "
                    f"ms/step, first step done {run['seconds_to_first_step_done']:.1f} s, {wall:.0f} s)",
                    flush=True,
                )
            else:
                run["error"] = f"exit code {code}: {log_tail(log_path)}"
                print(f"[throughput] {variant.name} FAILED (exit {code}); log: {log_path}", flush=True)
            runs.append(run)
        on_round(runs)
        if round_index == 0 and settings.repeats > 1:
            round_seconds = time.perf_counter() - round_started
            print(
                f"[throughput] a round takes {round_seconds:.0f} s; {settings.repeats - 1} more: about "
                f"{round_seconds * (settings.repeats - 1) / 60:.1f} min",
                flush=True,
            )
    return runs


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(
    runs: list[dict[str, Any]], plans: list[Plan], flops: dict[str, Any], peak: dict[str, Any]
) -> dict[str, Any]:
    """Per variant: images/s, the ratio to the seed run of the same round, GFLOP/s and share of peak."""
    good = [run for run in runs if "error" not in run]
    seed_by_round = {run["round"]: run["images_per_second"] for run in good if run["variant"] == SEED.name}
    summary = {}
    for plan in plans:
        mine = [run for run in good if run["variant"] == plan.variant.name]
        entry: dict[str, Any] = {
            "description": plan.variant.description,
            "overrides": list(plan.variant.overrides),
            "environment": plan.variant.environment,
            "warmup_steps": plan.warmup,
            "timed_steps": plan.steps,
            "successful_runs": len(mine),
            "failed_runs": sum(1 for run in runs if run["variant"] == plan.variant.name and "error" in run),
        }
        if mine:
            speeds = [run["images_per_second"] for run in mine]
            ratios = [
                run["images_per_second"] / seed_by_round[run["round"]]
                for run in mine
                if run["round"] in seed_by_round
            ]
            median_speed = statistics.median(speeds)
            gflops = median_speed * flops["training_gflop_per_image"]
            entry.update(
                {
                    "images_per_second": spread(speeds),
                    "ratio_vs_seed": spread(ratios) if ratios else None,
                    "seconds_per_step_median": plan.batch_size / median_speed,
                    "gflops": gflops,
                    "fraction_of_peak": gflops / peak["peak_gflops"] if peak["peak_gflops"] else None,
                    "seconds_to_first_step_done": spread([run["seconds_to_first_step_done"] for run in mine]),
                    "peak_rss_mb": max(run["peak_rss_mb"] for run in mine),
                }
            )
        summary[plan.variant.name] = entry
    return summary


def measure_stage(settings: Settings, prepared_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    """The whole train stage (`python -m fashion_cnn.train`, params.yaml as is) stopped after the steps."""
    import mlflow

    stage_root = settings.scratch / "stage-project"
    stage_root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(settings.root / name, stage_root / name)
    shutil.copytree(settings.root / "conf", stage_root / "conf")
    (stage_root / "data").mkdir()
    (stage_root / "data" / "prepared").symlink_to(prepared_dir.resolve(), target_is_directory=True)
    tracking_uri = f"sqlite:///{stage_root / 'mlflow.db'}"
    # Earlier stages of `dvc repro` create the store; so does this, outside the measured process.
    mlflow.MlflowClient(tracking_uri).search_experiments()
    batch_size = compose_config(settings.root, []).train.batch_size
    environment = worker_environment(
        {"FASHION_CNN_ROOT": str(stage_root), "MLFLOW_TRACKING_URI": tracking_uri}
    )
    result_path = settings.scratch / "stage.json"
    log_path = settings.scratch / "stage.log"
    arguments = ["stage", "--result", str(result_path), "--warmup", str(warmup), "--steps", str(steps)]
    arguments += ["--batch-size", str(batch_size)]
    print(f"[stage] python -m fashion_cnn.train, stopped after {warmup + steps} steps", flush=True)
    code, peak_rss_mb, wall = run_worker(arguments, environment, stage_root, log_path)
    if code != 0 or not result_path.is_file():
        return {"error": f"exit code {code}: {log_tail(log_path)}"}
    result = json.loads(result_path.read_text())
    result.update({"peak_rss_mb": peak_rss_mb, "wall_seconds": wall, "mlflow_store": "created beforehand"})
    print(
        f"[stage] peak RSS {peak_rss_mb:.0f} MB, first step done "
        f"{result['seconds_to_first_step_done']:.1f} s after start (imports "
        f"{result['seconds_imports']:.1f} s, data {result['seconds_data_loading']:.1f} s)",
        flush=True,
    )
    return result


def run_benchmark(settings: Settings, on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Measure everything `settings` asks for; return the report (on_progress sees partial ones)."""
    started = time.perf_counter()
    settings.scratch.mkdir(parents=True, exist_ok=True)
    if os.getloadavg()[0] > 0.5:
        print(f"[warning] load average {os.getloadavg()[0]:.1f}: other work will slow the runs", flush=True)
    hardware = machine.hardware()
    default_config = compose_config(settings.root, [])
    flops = machine.training_flops(default_config.model)
    peak = machine.peak_gflops(hardware)
    prepared_dir, prepared_source = resolve_prepared_dir(settings)
    training_images = count_training_images(prepared_dir)
    plans, not_applicable = plan_variants(settings, hardware["flags"], training_images)
    report: dict[str, Any] = {
        "complete": False,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware,
        "versions": machine.versions(),
        "settings": {
            "repeats": settings.repeats,
            "timed_steps": settings.steps,
            "warmup_steps": settings.warmup,
            "batch_size": SEED_BATCH_SIZE,
            "model": default_config.model.name,
            "parameters": count_parameters(default_config.model),
            "training_images": training_images,
            "prepared_data": prepared_source,
            "order": "each round runs every variant once, in this order: "
            + ", ".join(plan.variant.name for plan in plans),
            "niceness": os.nice(0),
            # Anything else running (a load near the core count) slows every variant: check this first.
            "load_average_at_start": os.getloadavg(),
        },
        "compute": {**flops, **peak},
        "not_applicable": not_applicable,
    }

    def publish(runs: list[dict[str, Any]]) -> None:
        report["runs"] = runs
        report["variants"] = summarize(runs, plans, flops, peak)
        report["elapsed_seconds"] = time.perf_counter() - started
        if on_progress:
            on_progress(report)

    runs = measure_throughput(settings, plans, prepared_dir, publish)
    seed_parameters = {
        run["parameters"] for run in runs if run["variant"] == SEED.name and "parameters" in run
    }
    # The seed's Sequential and the layer list in params.yaml must describe the same network.
    report["settings"]["same_architecture"] = (
        seed_parameters == {report["settings"]["parameters"]} if seed_parameters else None
    )
    publish(runs)
    if settings.stage:
        report["train_stage"] = measure_stage(settings, prepared_dir, settings.steps, settings.warmup)
        publish(runs)
    if settings.pipeline:
        report["pipeline"] = pipeline_timing.time_pipeline(
            settings.root, settings.pipeline_profile, settings.noop_repeats, settings.scratch
        )
    report["complete"] = True
    publish(runs)
    return report


def failed_runs(report: dict[str, Any]) -> list[str]:
    """Names of what failed: variant runs and the stage run."""
    failures = [f"{run['variant']} round {run['round']}" for run in report.get("runs", []) if "error" in run]
    if "error" in report.get("train_stage", {}):
        failures.append("train stage")
    return failures


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="which variants (cpu)")
    parser.add_argument("--variants", help="comma-separated subset of the profile's variants (all)")
    parser.add_argument("--steps", type=int, default=32, help="timed steps per run (32)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps before them (4)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all variants (3)")
    parser.add_argument("--prepared-dir", type=Path, help="prepared arrays (default: data/prepared)")
    parser.add_argument("--output", type=Path, help="report file (default: reports/benchmarks.json)")
    parser.add_argument("--no-stage", action="store_true", help="skip the whole-stage run (memory)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the dvc repro timings")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (worker logs)")
    arguments = parser.parse_args(argv)
    for name in ("steps", "warmup", "repeats"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} = {getattr(arguments, name)}: must be at least 1")
    return arguments


def select_variants(profile: str, names: str | None) -> tuple[Variant, ...]:
    """The profile's variants, or the named subset (the seed is always kept: it is the reference)."""
    available = {variant.name: variant for variant in PROFILES[profile]}
    if not names:
        return PROFILES[profile]
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise FashionCnnError(
            f"--variants: unknown {', '.join(unknown)} (profile {profile} has: {', '.join(available)})"
        )
    return tuple(variant for variant in PROFILES[profile] if variant.name in {SEED.name, *wanted})


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.train_throughput`."""
    arguments = parse_arguments(argv)
    root = paths.find_root()
    output = arguments.output or default_report_path()
    scratch = Path(tempfile.mkdtemp(prefix="fashion-cnn-bench-"))

    def action() -> str:
        from benchmarks import table

        settings = Settings(
            root=root,
            scratch=scratch,
            variants=select_variants(arguments.profile, arguments.variants),
            steps=arguments.steps,
            warmup=arguments.warmup,
            repeats=arguments.repeats,
            prepared_dir=arguments.prepared_dir,
            stage=not arguments.no_stage,
            pipeline=not arguments.no_pipeline,
        )
        report = run_benchmark(settings, on_progress=lambda partial: write_json_atomic(output, partial))
        if failures := failed_runs(report):
            raise FashionCnnError(f"{len(failures)} run(s) failed: {', '.join(failures)}; see {output}")
        return table.format_report(report) + f"\n\nwrote {output} in {report['elapsed_seconds'] / 60:.1f} min"

    try:
        return run_cli(action)
    finally:
        if arguments.keep:
            print(f"kept worker logs in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
