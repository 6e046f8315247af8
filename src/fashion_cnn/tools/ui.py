"""Serve the MLflow UI for the project's own store: `python -m fashion_cnn.tools.ui [--port N]` (make ui).

It marks both experiments as model training (so the UI opens on their runs tables, not on the GenAI
overview), prints the direct address of each runs table, then becomes `mlflow server` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from fashion_cnn.config.schema import read_params_file
from fashion_cnn.config.sections import TrackingStageConfig
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import runs
from fashion_cnn.utils import paths, quiet

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# The server's job runner (GenAI features) costs 8 processes and about 1 GB; tracking needs none.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def runs_table_lines(project: paths.ProjectPaths, base_url: str) -> list[str]:
    """One line per experiment of params.yaml: its name and the address of its runs table."""
    config = TrackingStageConfig.from_params(read_params_file(project.params_file))
    lines = []
    for name in (config.tracking.experiment_name, config.tracking.pipeline_experiment_name):
        experiment_id = runs.use_experiment(project, name)
        lines.append(f"{name}: {runs.runs_table_url(base_url, experiment_id)}")
    return lines


def check_port_free(port: int) -> None:
    """A FashionCnnError when 127.0.0.1:port cannot be listened on: said before the runs tables'
    addresses are printed, not by the server after them (it then exits 0, and the addresses may lead
    to whatever holds the port)."""
    with socket.socket() as probe:
        # As the server binds: a port some closed connection still waits on is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise FashionCnnError(
                f"cannot listen on {HOST}:{port} ({error.strerror or error}); another program (another "
                "`make ui`?) has it: stop it, or choose another port: make ui MLFLOW_PORT=<port> (or "
                "--port <port>)"
            ) from None


def server_command(project: paths.ProjectPaths, port: int) -> list[str]:
    """`mlflow server` over the project's SQLite store and artifact folder, on 127.0.0.1 only."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{project.mlflow_db}",
        "--default-artifact-root", str(project.root / "mlartifacts"),
        "--host", HOST, "--port", str(port),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the runs tables' addresses, then replace this process with the server."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.tools.ui", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})"
    )
    arguments = parser.parse_args(argv)
    project = paths.project_paths()
    # The UI shows the local store, whatever MLFLOW_TRACKING_URI says.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    base_url = f"http://{HOST}:{arguments.port}"
    try:
        check_port_free(arguments.port)
        lines = runs_table_lines(project, base_url)
    except FashionCnnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MLflow UI on {base_url} (Ctrl-C stops it); the training runs:", *lines, sep="\n  ", flush=True)
    command = server_command(project, arguments.port)
    quiet.uninstall()
    os.execve(
        command[0],
        command,
        {**os.environ, **{key: os.environ.get(key, value) for key, value in SERVER_ENVIRONMENT.items()}},
    )
    return 0  # Not reached: execve replaces the process.


if __name__ == "__main__":
    sys.exit(main())
