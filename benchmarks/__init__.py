"""Benchmarks (not tests): training throughput against the seed's plain Keras code, pipeline timings.

`make bench` runs `python -m benchmarks.train_throughput` (writes reports/benchmarks.json) and
`python -m benchmarks.table --readme README.md` (the README's Performance tables).
"""

from __future__ import annotations

from pathlib import Path

REPORT_NAME = "benchmarks.json"


def default_report_path() -> Path:
    """reports/benchmarks.json of the project found from the working directory."""
    from fashion_cnn import paths

    return paths.project_paths().reports_dir / REPORT_NAME
