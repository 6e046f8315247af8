"""Stage download: the four Fashion-MNIST files into data/raw/, verified by SHA-256 (fashion_cnn.fetch)."""

from __future__ import annotations

import mlflow

from fashion_cnn import fetch, paths, tracking
from fashion_cnn.cli import stage_main
from fashion_cnn.config import ProjectConfig


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.download`."""
    sources = fetch.source_list(list(config.data.sources))
    with tracking.pipeline_run(project, config, "download"):
        used = fetch.download(
            sources, config.data.timeout_seconds, project.raw_dir, config.data.deadline_seconds
        )
        mlflow.set_tags({f"source.{name}": source for name, source in used.items()})


if __name__ == "__main__":
    main()
