"""Hydra sweeps in MLflow: the jobs of one `-m` multirun become child runs of one parent run.

The callback is registered in every stage's Hydra config (config.py); tracking.stage_run asks
`current()` whether a sweep is on and, if so, tags its run with the parent's id.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class Sweep:
    """The parent MLflow run of one multirun, started when the sweep's first job starts a run."""

    def __init__(self, overrides: list[str]) -> None:
        self.overrides = overrides
        self.parent_run_id: str | None = None
        self.tracking_uri = ""
        # The final status of each job's run, in order.
        self.child_statuses: list[str] = []

    def start_parent(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Create the parent run in the jobs' experiment (not as the active run: jobs start their own)."""
        self.tracking_uri = mlflow.get_tracking_uri()
        run = mlflow.MlflowClient(self.tracking_uri).create_run(
            experiment_id, run_name=f"sweep {' '.join(self.overrides)}"[:200], tags=tags | {"sweep": "parent"}
        )
        self.parent_run_id = run.info.run_id

    def close(self, completed: bool = False) -> None:
        """End the parent run: FINISHED when every job finished, else as the first job that did not."""
        if self.parent_run_id is None:
            return
        unfinished = [status for status in self.child_statuses if status != "FINISHED"]
        status = "FINISHED" if completed and not unfinished else (unfinished or ["FAILED"])[0]
        try:
            mlflow.MlflowClient(self.tracking_uri).set_terminated(self.parent_run_id, status)
        except (mlflow.exceptions.MlflowException, OSError) as error:
            log.warning("could not end the sweep's parent MLflow run %s: %s", self.parent_run_id, error)
        self.parent_run_id = None


_current: Sweep | None = None


def current() -> Sweep | None:
    """The multirun in progress in this process, or None outside `-m`."""
    return _current


class ParentRunCallback(Callback):
    """Hydra callback: open a Sweep when a multirun starts, end its parent run when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current
        _current = Sweep([str(item) for item in config.hydra.overrides.task])
        # A failing job ends the process without on_multirun_end: the parent must not stay RUNNING.
        atexit.register(_current.close)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _current
        if _current is not None:
            atexit.unregister(_current.close)
            _current.close(completed=True)
            _current = None
