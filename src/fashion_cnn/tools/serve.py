"""Serve the latest trained model over HTTP: `python -m fashion_cnn.tools.serve [--port N]` (make serve).

Runs `mlflow models serve --env-manager local` on 127.0.0.1 for the model that the train stage
logged to MLflow (its run is recorded in data/model/mlflow_run.json), in this environment.
POST standardized images, shape (count, 28, 28, 1), as {"inputs": [...]} to /invocations.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fashion_cnn import paths, quiet, server, trained_model
from fashion_cnn.errors import FashionCnnError

PORT_ENV_VAR = "SERVE_PORT"
# 5000 is `make ui`'s default port.
DEFAULT_PORT = 5001


def serve_command(project: paths.ProjectPaths, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow models serve` command for the recorded run's model, and its environment."""
    recorded = trained_model.read_training_run(project)
    run_id, uri = recorded.run_id, recorded.tracking_uri
    if server.is_remote(uri):
        server.check_server(uri)
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "--model-uri", f"runs:/{run_id}/model",
        "--env-manager", "local",
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    # The model lives in the store the run was logged to, wherever MLFLOW_TRACKING_URI points now.
    return command, os.environ | {"MLFLOW_TRACKING_URI": uri}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: replace this process with the model server (exit 1 with one line when it cannot)."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.tools.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--port",
        type=int,
        # A string default goes through `type` too, so a bad $SERVE_PORT is a one-line usage error.
        default=os.environ.get(PORT_ENV_VAR) or str(DEFAULT_PORT),
        help=f"port on 127.0.0.1 (default ${PORT_ENV_VAR}, else {DEFAULT_PORT})",
    )
    arguments = parser.parse_args(argv)
    try:
        command, environment = serve_command(paths.project_paths(), "127.0.0.1", arguments.port)
    except (FashionCnnError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"serving {command[command.index('--model-uri') + 1]} on http://127.0.0.1:{arguments.port}/invocations"
    )
    sys.stdout.flush()
    # The model server writes its own log: give it the terminal, not this process's stderr filter.
    quiet.uninstall()
    os.execve(command[0], command, environment)
    return 0  # Not reached: execve replaces the process.


if __name__ == "__main__":
    sys.exit(main())
