"""Every file location the stages read or write; mirrors the deps and outs of dvc.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV_VAR = "FASHION_CNN_ROOT"


def find_root(start: Path | None = None) -> Path:
    """Return the project root: $FASHION_CNN_ROOT, else the nearest ancestor of `start` with dvc.yaml."""
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).resolve()
    start = (start or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / "dvc.yaml").is_file() and (candidate / "params.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no project root found above {start}: expected a folder holding dvc.yaml and params.yaml "
        f"(run from inside the repository or set {ROOT_ENV_VAR})"
    )


@dataclass(frozen=True)
class ProjectPaths:
    """Paths of one checkout of the project, all absolute."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def model_dir(self) -> Path:
        return self.root / "data" / "model"

    @property
    def model_file(self) -> Path:
        return self.model_dir / "model.keras"

    @property
    def run_info_file(self) -> Path:
        """Written by train, read by evaluate and figures to log into the same MLflow run."""
        return self.model_dir / "mlflow_run.json"

    @property
    def model_outputs_file(self) -> Path:
        """Written by evaluate: what the model computed on the test split, for model_figures."""
        return self.root / "data" / "evaluate" / "model_outputs.npz"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def history_file(self) -> Path:
        """Per-epoch losses and accuracies (a DVC plot)."""
        return self.reports_dir / "train" / "history.csv"

    @property
    def train_metrics_file(self) -> Path:
        return self.reports_dir / "train" / "metrics.json"

    @property
    def metrics_file(self) -> Path:
        """The test metrics DVC reports (dvc metrics show/diff) and the README quotes."""
        return self.reports_dir / "metrics.json"

    @property
    def evaluate_dir(self) -> Path:
        return self.reports_dir / "evaluate"

    @property
    def figures_dir(self) -> Path:
        return self.reports_dir / "figures"

    @property
    def recipe_reports_dir(self) -> Path:
        """The recipe sweep's table and frontier plot (fashion_cnn.tools.sweep_report)."""
        return self.reports_dir / "recipe"

    @property
    def train_lock_file(self) -> Path:
        """Held by the training run in progress, so that a second one in this checkout stops (in data/,
        outside every DVC output; checkpoints/ goes away once training completes)."""
        return self.root / "data" / "train.lock"

    @property
    def train_checkpoint_dir(self) -> Path:
        """Training state saved after each epoch (train.checkpoint); outside every DVC output, so
        `dvc repro` neither deletes it before rerunning train nor caches it (git- and dvc-ignored)."""
        return self.root / "checkpoints" / "train"

    @property
    def store_root(self) -> Path:
        """Where the local MLflow store lives: the root, or, for an experiment DVC runs in a temporary
        workspace (`dvc exp run --queue` or `--temp`: <repo>/.dvc/tmp/exps/<id>/), the repository it
        belongs to, so its runs land beside all the others instead of vanishing with the workspace."""
        parts = self.root.parts
        for index in range(len(parts) - 2):
            if parts[index : index + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:index])
        return self.root

    @property
    def mlflow_db(self) -> Path:
        return self.store_root / "mlflow.db"


def project_paths(start: Path | None = None) -> ProjectPaths:
    """Resolve the project's paths once, from the working directory (DVC runs stages in the root)."""
    return ProjectPaths(find_root(start))
