"""Benchmarks (not tests): training throughput against the seed's plain Keras code, pipeline timings.

`make bench` runs `python -m benchmarks.train_throughput` (writes reports/benchmarks.json), then
`python -m benchmarks.table --doc docs/performance.md` (the tables between that page's markers).
"""

from pathlib import Path


def default_report_path() -> Path:
    """reports/benchmarks.json of the project found from the working directory."""
    from fashion_cnn import paths

    return paths.project_paths().reports_dir / "benchmarks.json"
