"""Reading the MLflow store the stages log to: runs, experiments, metric histories and logged models,
for the tools (compare, sweep_report, log_training, race) and the stages that follow a trained model."""

from __future__ import annotations

from typing import Any

import mlflow


def current_uri() -> str:
    """The tracking URI MLflow is pointed at (runs.connect sets it)."""
    return mlflow.get_tracking_uri()


def find_run(run_id: str) -> Any | None:  # -> mlflow.entities.Run
    """The run with this id in the current store, or None when the store does not have it."""
    try:
        return mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def experiment_name(experiment_id: str) -> str:
    """The name of the experiment with this id."""
    return mlflow.get_experiment(experiment_id).name


def search_runs(experiment_name: str, **criteria: Any) -> Any:  # -> pandas.DataFrame
    """The experiment's runs as MLflow's table (mlflow.search_runs's filter_string, order_by, ...)."""
    return mlflow.search_runs(experiment_names=[experiment_name], **criteria)


def logged_steps(run_id: str, metric: str) -> set[int]:
    """The steps (epochs) at which the run has a value of `metric`."""
    return {point.step for point in mlflow.MlflowClient().get_metric_history(run_id, metric)}


def ready_model_uri(run: Any) -> str | None:
    """The URI (models:/m-...) of the model the run logged, once it finished uploading (MLflow 3's
    logged models); None when it has none."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    ready = [item for item in models if item.status == mlflow.entities.LoggedModelStatus.READY]
    return ready[-1].model_uri if ready else None


def has_ready_model(run: Any) -> bool:
    """Whether the run has logged a model that finished uploading."""
    return ready_model_uri(run) is not None


def run_params(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The params of a run in the store at `tracking_uri` (not necessarily the current one)."""
    return mlflow.MlflowClient(tracking_uri).get_run(run_id).data.params
