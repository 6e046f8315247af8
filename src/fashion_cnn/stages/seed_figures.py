"""Stage seed_figures: the seed notebook's teaching figures (padding, strides, filters, pooling) as PNG.

Nothing here depends on the data or the trained model (fashion_cnn.convolution_figures draws them).
"""

from __future__ import annotations

import logging

import mlflow

from fashion_cnn import convolution_figures, paths, tracking
from fashion_cnn.cli import stage_main
from fashion_cnn.config import ProjectConfig

log = logging.getLogger(__name__)


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.seed_figures`."""
    output_dir = project.figures_dir / "seed"
    with tracking.pipeline_run(project, config, "seed_figures"):
        written = convolution_figures.render_seed_figures(output_dir)
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="figures/seed")
    log.info("wrote %d figures to %s", len(written), output_dir)


if __name__ == "__main__":
    main()
