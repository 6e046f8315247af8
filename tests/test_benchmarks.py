"""The benchmark harness on tiny data: the seed's code and the train stage's fit, two timed steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import table, train_throughput

# Two fresh TensorFlow processes: more than the ~10 s a fast test may take.
pytestmark = pytest.mark.slow


def test_harness_reports_both_variants_with_positive_numbers(
    tmp_path: Path, synthetic_prepared: Path, repo_root: Path
) -> None:
    options = train_throughput.parse_arguments(
        ["--variants", "project", "--steps", "2", "--warmup", "1", "--repeats", "1"]
        + ["--prepared-dir", str(synthetic_prepared), "--no-stage", "--no-pipeline"]
    )
    options.root, options.scratch = repo_root, tmp_path / "scratch"
    report_file = tmp_path / "benchmarks.json"
    train_throughput.run_benchmark(options, report_file)
    report = json.loads(report_file.read_text())

    assert report["complete"] is True
    assert train_throughput.failed_runs(report) == []
    assert {"hardware", "versions", "settings", "compute", "runs", "variants"} <= set(report)
    assert report["hardware"]["logical_cpus"] > 0 and "avx2" in report["hardware"]["flags"]
    assert {"python", "tensorflow", "keras", "numpy"} <= set(report["versions"])
    # The seed's Sequential and params.yaml's layer list are the same 1,413,834-parameter network.
    assert report["settings"]["same_architecture"] is True
    # 3 x forward FLOPs of the seed model (see test_memory's multiply-add count): about 0.54 GFLOP.
    assert report["compute"]["training_gflop_per_image"] == pytest.approx(0.5368, abs=1e-4)
    assert report["compute"]["peak_gflops"] > 0
    assert [(run["variant"], run["timed_steps"]) for run in report["runs"]] == [("seed", 2), ("project", 2)]
    for name in ("seed", "project"):
        entry = report["variants"][name]
        assert entry["successful_runs"] == 1
        for key in ("images_per_second", "ratio_vs_seed", "seconds_to_first_step_done"):
            assert entry[key]["median"] > 0, (name, key)
        assert entry["gflops"] > 0 and entry["peak_rss_mb"] > 0
        # What ran, read back from the model once fit had started (float32: neither sets a policy).
        assert {"device", "jit_compile", "dtype_policy"} <= set(entry["effective"]), name
        assert entry["effective"]["dtype_policy"] == ["float32"], name
    # The project's run records the train stage's read-back: params.yaml has jit_compile off, determinism on.
    assert report["runs"][1]["effective"]["jit_compile"] is False
    assert report["runs"][1]["effective"]["deterministic"] is True
    markdown = table.format_report(report)
    assert "| `seed` |" in markdown and "| `project` |" in markdown and "XLA as run" in markdown
