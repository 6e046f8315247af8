"""The checks of benchmarks/gpu_check.sh: what a GPU run of `experiment=gpu` must show it did.

`python -m benchmarks.gpu_checks WORKDIR [--min-accuracy 0.905]` reads the run's MLflow params (the
`runtime.*` values the train stage read back from the model once fit had started), its test metrics
and history, prints one ok/FAILED line per check and exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from fashion_cnn.reproduction.race_report import LARGE_BATCH, load_race_config
from fashion_cnn.utils.paths import find_root


def gpu_checks(params: dict[str, str], test_accuracy: float, min_accuracy: float) -> dict[str, bool]:
    """Each check's description and whether the run passed it."""
    return {
        "GPU visible and used (runtime.device)": params.get("runtime.device") == "GPU",
        "XLA on (model.jit_compile, runtime.jit_compile)": params.get("runtime.jit_compile") == "True",
        "dtype policy mixed_float16 (runtime.dtype_policy)": (
            params.get("runtime.dtype_policy") == "mixed_float16"
        ),
        "float32 output layer (runtime.output_dtype)": params.get("runtime.output_dtype") == "float32",
        f"global batch >= {LARGE_BATCH} (runtime.global_batch_size)": int(
            params.get("runtime.global_batch_size") or 0
        )
        >= LARGE_BATCH,
        f"test accuracy {test_accuracy:.4f} >= {min_accuracy}": test_accuracy >= min_accuracy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="the project copy the pipeline ran in")
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="least test accuracy (default: large_batch_accuracy of conf/race.yaml, the seed's)",
    )
    arguments = parser.parse_args(argv)
    import mlflow

    work = arguments.workdir
    run_id = json.loads((work / "data" / "model" / "mlflow_run.json").read_text())["run_id"]
    params = mlflow.MlflowClient().get_run(run_id).data.params
    accuracy = json.loads((work / "reports" / "metrics.json").read_text())["test"]["accuracy"]
    with (work / "reports" / "train" / "history.csv").open(newline="") as lines:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(lines)]
    minimum = arguments.min_accuracy or load_race_config(find_root()).large_batch_accuracy
    checks = gpu_checks(params, accuracy, minimum)
    for what, passed in checks.items():
        print(("ok      " if passed else "FAILED  ") + what)
    print("as run:", {key: value for key, value in sorted(params.items()) if key.startswith("runtime.")})
    print(f"epochs: {len(seconds)}, {sum(seconds):.1f} s; MLflow run {run_id}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
