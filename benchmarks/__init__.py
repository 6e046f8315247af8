"""Benchmarks (not tests): training throughput against the seed's plain Keras code, pipeline timings.

`make bench` runs `python -m benchmarks.train_throughput` (writes reports/benchmarks.json), then
`python -m benchmarks.table --doc docs/performance.md` (the tables between that page's markers).
`make bench-startup` runs `python -m benchmarks.startup`: `dvc repro` of the quick profile from nothing, a
baseline commit against the working tree (reports/startup.json and its table in docs/performance.md).
"""

from pathlib import Path


def default_report_path() -> Path:
    """reports/benchmarks.json of the project found from the working directory."""
    from fashion_cnn.utils import paths

    return paths.project_paths().reports_dir / "benchmarks.json"
