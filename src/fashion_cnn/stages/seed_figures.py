"""Stage seed_figures: the seed notebook's teaching figures (padding, strides, filters, pooling) as PNG.

Nothing here depends on the data or the trained model (fashion_cnn.figures.convolution draws them).
"""

from __future__ import annotations

import logging

from fashion_cnn.config.cli import stage_main
from fashion_cnn.config.sections import TrackingStageConfig
from fashion_cnn.figures import convolution
from fashion_cnn.tracking import record, runs
from fashion_cnn.utils import paths

log = logging.getLogger(__name__)


@stage_main
def main(config: TrackingStageConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.seed_figures`."""
    output_dir = project.figures_dir / "seed"
    with runs.pipeline_run(project, config, "seed_figures"):
        written = convolution.render_seed_figures(output_dir)
        record.artifacts(written, "figures/seed")
    log.info("wrote %d figures to %s", len(written), output_dir)


if __name__ == "__main__":
    main()
