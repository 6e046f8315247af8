"""Stage model_figures: what the trained model learned (filters, feature maps, curves, mistakes) as PNG.

It draws what evaluate computed with the model in data/model (data/evaluate/model_outputs.npz; no
model is loaded, TensorFlow is not imported) and logs the figures into that model's MLflow run.
"""

from __future__ import annotations

import logging

from fashion_cnn.config.cli import stage_main
from fashion_cnn.data.splits import load_split
from fashion_cnn.evaluation import model_outputs
from fashion_cnn.figures import learned
from fashion_cnn.tracking import record
from fashion_cnn.training import history, trained_model
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths

log = logging.getLogger(__name__)


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.model_figures`."""
    test = load_split(project.prepared_dir, "test")
    outputs = model_outputs.read(project.model_outputs_file, test, project.model_file)
    history_rows = history.read_history(project.history_file)
    output_dir = project.figures_dir / "model"
    with trained_model.model_run(project, config, "model_figures"):
        written = learned.render_model_figures(outputs, test, history_rows, output_dir)
        record.artifacts(written, "figures/model")
    log.info("wrote %d figures to %s", len(written), output_dir)


if __name__ == "__main__":
    main()
