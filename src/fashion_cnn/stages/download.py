"""Stage download: the four Fashion-MNIST files into data/raw/, verified by SHA-256 (data/fetch.py)."""

from __future__ import annotations

from fashion_cnn.config.cli import stage_main
from fashion_cnn.config.sections import DataStageConfig
from fashion_cnn.data import fetch
from fashion_cnn.tracking import record, runs
from fashion_cnn.utils import paths


@stage_main
def main(config: DataStageConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.download`."""
    sources = fetch.source_list(list(config.data.sources))
    with runs.pipeline_run(project, config, "download"):
        used = fetch.download(
            sources, config.data.timeout_seconds, project.raw_dir, config.data.deadline_seconds
        )
        record.tags({f"source.{name}": source for name, source in used.items()})


if __name__ == "__main__":
    main()
