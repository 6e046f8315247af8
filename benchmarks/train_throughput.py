"""Training throughput of the train stage vs the seed's plain Keras code, plus pipeline timings.

`python -m benchmarks.train_throughput` (make bench) runs rounds of one fresh process per variant
(benchmarks.workers), the seed first in each, so every ratio compares runs minutes apart; then the
whole train stage once, and `dvc repro` of the quick profile. It writes reports/benchmarks.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import default_report_path, pipeline_timing, table
from benchmarks.workers import SEED_BATCH_SIZE, compose_config, run_worker
from fashion_cnn.config.cli import run_cli
from fashion_cnn.data import fetch, splits
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.model.architecture import ModelConfig, count_parameters, infer_shapes
from fashion_cnn.stages import prepare
from fashion_cnn.utils import machine, paths
from fashion_cnn.utils.atomic import write_json_atomic


@dataclasses.dataclass(frozen=True)
class Variant:
    """A way of training the seed architecture: the train stage's fit with overrides and environment."""

    name: str
    description: str
    overrides: tuple[str, ...] = ()
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    needs_any_flag: tuple[str, ...] = ()  # run only on CPUs with one of these /proc/cpuinfo flags


def setting(name: str, *overrides: str, note: str = "", **options: Any) -> Variant:
    """A variant described by its overrides and a note."""
    return Variant(name, f"{', '.join(overrides)} {note}".strip(), overrides, **options)


# The seed runs the notebook's code instead of the train stage's, first in every round.
SEED = Variant("seed", "the seed notebook's plain Keras code (reference)")
PROJECT = Variant("project", "the train stage's fit with params.yaml as committed")
ONEDNN_OFF = "TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's default on x86 Linux, which the others use, is 1)"
GPU_FAST = ("train.mixed_precision=mixed_float16", "train.steps_per_execution=9")
PROFILES = {
    "cpu": (
        SEED,
        PROJECT,
        # The seed recipe's epoch is 1,719 steps (55,000 images / 32): 3 and 9 are values that divide it.
        setting("steps_per_execution_3", "train.steps_per_execution=3"),
        setting("steps_per_execution_9", "train.steps_per_execution=9"),
        # Keras runs no XLA under deterministic ops: compare this with `nondeterministic`, not `project`.
        setting("jit_compile", "train.jit_compile=on", "train.deterministic=false", note="(XLA on the CPU)"),
        setting("inter_op_1", "train.inter_op_threads=1", note="(one op at a time, each on every core)"),
        Variant("onednn_off", ONEDNN_OFF, environment={"TF_ENABLE_ONEDNN_OPTS": "0"}),
        setting("nondeterministic", "train.deterministic=false", note="(the price of deterministic ops)"),
        setting(
            "mixed_bfloat16", "train.mixed_precision=mixed_bfloat16", needs_any_flag=machine.BFLOAT16_FLAGS
        ),
    ),
    "gpu": (
        SEED,
        PROJECT,
        setting("gpu_fast", *GPU_FAST, note="(XLA off, deterministic ops)"),
        # XLA needs nondeterministic ops (Keras turns it off under determinism).
        setting("gpu_fast_xla", *GPU_FAST, "train.jit_compile=on", "train.deterministic=false"),
    ),
}


def select_variants(
    options: argparse.Namespace, flags: dict[str, bool]
) -> tuple[list[Variant], dict[str, str]]:
    """The profile's variants (the --variants subset and the seed) this CPU can run, and why not the rest."""
    available = [variant.name for variant in PROFILES[options.profile]]
    wanted = {SEED.name, *(name.strip() for name in (options.variants or ",".join(available)).split(","))}
    if unknown := sorted(wanted - set(available)):
        raise FashionCnnError(f"--variants: unknown {unknown} (profile {options.profile} has {available})")
    chosen, not_applicable = [], {}
    for variant in (variant for variant in PROFILES[options.profile] if variant.name in wanted):
        if not variant.needs_any_flag or any(map(flags.get, variant.needs_any_flag)):
            chosen.append(variant)
        else:
            flags_wanted = " or ".join(variant.needs_any_flag)
            not_applicable[variant.name] = f"not applicable: the CPU has no {flags_wanted}"
    return chosen, not_applicable


def prepared_data(options: argparse.Namespace) -> tuple[Path, str]:
    """The prepared arrays to train on: given, data/prepared, else made now by the project's own code."""
    if options.prepared_dir is not None:
        return options.prepared_dir, "given on the command line"
    if (paths.ProjectPaths(options.root).prepared_dir / "train.npz").is_file():
        return paths.ProjectPaths(options.root).prepared_dir, "data/prepared"
    print("[data] no data/prepared: preparing it with the download and prepare stages", flush=True)
    data_config, raw_dir = compose_config(options.root, []).data, options.scratch / "raw"
    fetch.download(
        fetch.source_list(list(data_config.sources)),
        data_config.timeout_seconds,
        raw_dir,
        data_config.deadline_seconds,
    )
    prepare.prepare(raw_dir, options.scratch / "prepared", data_config)
    return options.scratch / "prepared", "prepared from data.sources by the prepare stage"


def measure_round(options: argparse.Namespace, variants: list[Variant], job: dict, index: int) -> list[dict]:
    """One fresh process per variant, the seed first; each run's images/s also as a ratio to the seed's."""
    runs: list[dict[str, Any]] = []
    for variant in variants:
        log_path = options.scratch / f"{variant.name}-{index}.log"
        variant_job = {
            **job,
            "kind": "seed" if variant == SEED else "project",
            "overrides": variant.overrides,
        }
        run = {
            "variant": variant.name,
            "round": index,
            **run_worker(variant_job, log_path, variant.environment),
        }
        seed_run = runs[0] if runs else run  # the seed runs first
        if "error" not in run and "error" not in seed_run:
            run["ratio_vs_seed"] = run["images_per_second"] / seed_run["images_per_second"]
        outcome = f"FAILED, log: {log_path}" if "error" in run else f"{run['images_per_second']:.1f} images/s"
        print(f"[throughput] round {index + 1} {variant.name}: {outcome}", flush=True)
        runs.append(run)
    return runs


def spread(values: list[float]) -> dict[str, float] | None:
    """Median, min and max (None without values)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def summarize(runs: list[dict], variants: list[Variant], compute: dict[str, Any]) -> dict[str, Any]:
    """Per variant: images/s, ratio to the seed, first-step time, GFLOP/s, share of peak, memory, what ran."""
    summary = {}
    for variant in variants:
        mine = [run for run in runs if run["variant"] == variant.name]
        good = [run for run in mine if "error" not in run]
        summary[variant.name] = entry = {
            "description": variant.description,
            "overrides": list(variant.overrides),
            "environment": variant.environment,
            "successful_runs": len(good),
            "failed_runs": len(mine) - len(good),
        }
        if good:
            for key in ("images_per_second", "ratio_vs_seed", "seconds_to_first_step_done"):
                entry[key] = spread([run[key] for run in good if key in run])
            entry["gflops"] = entry["images_per_second"]["median"] * compute["training_gflop_per_image"]
            entry["fraction_of_peak"] = (
                entry["gflops"] / compute["peak_gflops"] if compute["peak_gflops"] else None
            )
            entry["peak_rss_mb"] = max(run["peak_rss_mb"] for run in good)
            # Each read-back field's distinct values over the runs (one each when the runs agree).
            effective = [run["effective"] for run in good if run.get("effective")]
            entry["effective"] = {key: sorted({item[key] for item in effective}) for key in effective[0]}
    return summary


def compute(model_config: ModelConfig, machine: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per training image from the layer list, and the CPU's FP32 peak to hold GFLOP/s against."""
    multiply_adds = sum(shape.multiply_adds for shape in infer_shapes(model_config))
    flags = machine["flags"]
    # FP32 FLOP per cycle and core: 2 FMA units x 16 (AVX-512) or 8 (AVX2) lanes x 2, else SSE's 4 lanes x 2.
    per_cycle = 64 if flags["avx512f"] else 32 if flags["avx2"] and flags["fma"] else 8
    cores, gigahertz = (
        min(machine["usable_cpus"], machine["physical_cores"]),
        (machine["cpu_mhz"] or 0) / 1000,
    )
    return {
        # Training = 3 x forward: the backward pass holds two products the size of the forward one (weight
        # and input gradients). Pooling, activations, loss and optimizer are element-wise: far below 1 %.
        "training_gflop_per_image": 6 * multiply_adds / 1e9,
        "derivation": f"{multiply_adds:,} multiply-adds per image in the conv and dense layers x 2 FLOP = "
        "forward; training = 3 x forward (weight and input gradients)",
        "peak_gflops": cores * per_cycle * gigahertz,
        "assumption": f"{cores} cores x {per_cycle} FP32 FLOP/cycle x {gigahertz:.3f} GHz ('cpu MHz' in "
        "/proc/cpuinfo; a boost clock above it would raise the peak and lower the shares)",
    }


def run_benchmark(options: argparse.Namespace, output: Path | None = None) -> dict[str, Any]:
    """Measure everything `options` asks for; return the report, written to `output` as it grows."""
    started = time.perf_counter()
    options.scratch.mkdir(parents=True, exist_ok=True)
    hardware, project_config = machine.hardware(), compose_config(options.root, [])
    if project_config.train.batch_size != SEED_BATCH_SIZE:
        raise FashionCnnError(f"train.batch_size: the comparison with the seed needs its {SEED_BATCH_SIZE}")
    variants, not_applicable = select_variants(options, hardware["flags"])
    prepared_dir, prepared_source = prepared_data(options)
    report: dict[str, Any] = {
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": hardware,
        "versions": machine.versions(),
        "settings": {
            "profile": options.profile,
            "repeats": options.repeats,
            "timed_steps": options.steps,
            "warmup_steps": options.warmup,
            "batch_size": SEED_BATCH_SIZE,
            "model": project_config.model.name,
            "parameters": count_parameters(project_config.model),
            "training_images": len(splits.load_npz(prepared_dir / "train.npz", ("labels",))["labels"]),
            "prepared_data": prepared_source,
            # Anything else running (a load near the core count) slows every variant: check this first.
            "load_average_at_start": os.getloadavg(),
        },
        "compute": compute(project_config.model, hardware),
        "not_applicable": not_applicable,
        "runs": [],
    }

    def publish(**measured: Any) -> None:
        report.update(measured, elapsed_seconds=time.perf_counter() - started)
        if output:
            write_json_atomic(output, report)

    job = dict(prepared=str(prepared_dir), root=str(options.root), warmup=options.warmup, steps=options.steps)
    for round_index in range(options.repeats):
        report["runs"] += measure_round(options, variants, job, round_index)
        publish(variants=summarize(report["runs"], variants, report["compute"]))
    # The seed's Sequential and the layer list in params.yaml must describe the same network.
    settings = report["settings"]
    counted = [
        run["parameters"] for run in report["runs"] if run["variant"] == SEED.name and "error" not in run
    ]
    settings["same_architecture"] = (
        all(count == settings["parameters"] for count in counted) if counted else None
    )
    if options.stage:
        stage_job = {**job, "batch_size": SEED_BATCH_SIZE}
        publish(train_stage=pipeline_timing.measure_stage(options.root, options.scratch, stage_job))
    if options.pipeline:
        publish(pipeline=pipeline_timing.time_pipeline(options.root, "quick", options.scratch))
    publish(complete=True)
    return report


def failed_runs(report: dict[str, Any]) -> list[str]:
    """Names of what failed: variant runs and the stage run."""
    failures = [f"{run['variant']} round {run['round']}" for run in report.get("runs", []) if "error" in run]
    return failures + (["train stage"] if "error" in report.get("train_stage", {}) else [])


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
    parser.add_argument("--no-stage", dest="stage", action="store_false", help="skip the whole-stage run")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="skip dvc repro timings")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (worker logs)")
    options = parser.parse_args(argv)
    if min(options.steps, options.warmup, options.repeats) < 1:
        parser.error("--steps, --warmup and --repeats must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.train_throughput`."""
    options = parse_arguments(argv)
    options.root, options.scratch = paths.find_root(), Path(tempfile.mkdtemp(prefix="fashion-cnn-bench-"))
    output = options.output or default_report_path()

    def action() -> str:
        report = run_benchmark(options, output)
        if failures := failed_runs(report):
            raise FashionCnnError(f"{len(failures)} run(s) failed: {', '.join(failures)}; see {output}")
        return f"{table.format_report(report)}\n\nwrote {output} in {report['elapsed_seconds'] / 60:.1f} min"

    try:
        return run_cli(action)
    finally:
        if options.keep:
            print(f"kept worker logs in {options.scratch}")
        else:
            shutil.rmtree(options.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
