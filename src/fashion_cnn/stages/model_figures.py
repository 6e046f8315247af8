"""Stage model_figures: what the trained model learned (filters, feature maps, curves, mistakes) as PNG.

It draws the model in data/model and logs the figures into that model's MLflow run.
"""

from __future__ import annotations

import logging

import mlflow

from fashion_cnn import history, learned_figures, paths, trained_model
from fashion_cnn.cli import stage_main
from fashion_cnn.config import ProjectConfig
from fashion_cnn.data import load_split

log = logging.getLogger(__name__)


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.model_figures`."""
    model = trained_model.load_model(project.model_file)
    test = load_split(project.prepared_dir, "test")
    history_rows = history.read_history(project.history_file)
    output_dir = project.figures_dir / "model"
    with trained_model.model_run(project, config, "model_figures"):
        written = learned_figures.render_model_figures(model, test, history_rows, output_dir)
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="figures/model")
    log.info("wrote %d figures to %s", len(written), output_dir)


if __name__ == "__main__":
    main()
