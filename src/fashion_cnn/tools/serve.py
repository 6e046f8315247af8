"""Serve the trained model over HTTP on 127.0.0.1: `python -m fashion_cnn.tools.serve [--port N]`.

POST raw 28x28 grey images (pixel values 0..255, garment light on black, as in Fashion-MNIST) to
/invocations as {"inputs": [image, ...], "top": 3}, an image being 28 rows of 28 numbers (one image
without the outer list works too; "top" is optional, 1..10). The answer is predict's --json
"predictions" for each image: {"predictions": [[{"class": ..., "index": ..., "probability": ...}, ...]]}.
GET /health (or /ping) answers {"status": "ok"}. A bad request gets 400 (411 without a length, 413 when too
large, 408 when the body stalls) and {"error": "<one line>"}.

The model is data/model/model.keras, or the registered model `--model models:/<name>@<alias>` names
(fashion_cnn.tracking.registry), loaded through fashion_cnn.serving.classifier like predict does: refused
when it carries code (a Lambda layer or a custom object), then read in Keras safe mode. It takes the raw
pixels itself (its first layer is the training split's standardization). The server
(fashion_cnn.serving.http_server) answers bursts of hundreds of connections, drops a stalled client after
a bound, and batches concurrent requests into one forward pass (docs/serving.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.serving import classifier
from fashion_cnn.serving.http_server import HOST, ModelServer
from fashion_cnn.tracking import registry
from fashion_cnn.training import trained_model
from fashion_cnn.utils import paths

PORT_ENV_VAR = "SERVE_PORT"
# 5000 is `make ui`'s default port.
DEFAULT_PORT = 5001


def start_line(model: str | None, model_server: ModelServer) -> str:
    """What is served and where: the registered model, or the model file and its MLflow run; the URL."""
    served = str(model_server.classifier.model_path)
    if model is not None and registry.is_registry_uri(model):
        served = f"{model} ({registry.describe(model)})"
    elif model is None:
        try:
            run = f"MLflow run {trained_model.read_training_run(paths.project_paths()).run_id}"
        except DataError as error:  # The model is served all the same; the line says why no run is named.
            run = f"MLflow run unknown: {error}"
        served += f" ({run})"
    return f"serving {served} on {model_server.url}/invocations"


def port_number(text: str) -> int:
    """argparse type for --port: 0 (any free port) to 65535."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--port (or ${PORT_ENV_VAR}) must be 0 to 65535, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: serve until Ctrl-C (exit 0); exit 1 with one line when the model cannot be served."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.tools.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--port",
        type=port_number,
        # A string default goes through `type` too, so a bad $SERVE_PORT is a one-line usage error.
        default=os.environ.get(PORT_ENV_VAR) or str(DEFAULT_PORT),
        help=f"port on 127.0.0.1, 0 for any free one (default ${PORT_ENV_VAR}, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--model",
        help="a .keras file (default: data/model/model.keras) or a registered model: models:/<name>@<alias> "
        "or models:/<name>/<version>, from $MLFLOW_TRACKING_URI (else the project's mlflow.db)",
    )
    arguments = parser.parse_args(argv)
    try:
        with registry.model_file(arguments.model, paths.project_paths) as model_path:
            loaded = classifier.load_classifier(model_path)
        model_server = ModelServer(loaded, arguments.port)
        line = start_line(arguments.model, model_server)
    except (FashionCnnError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"error: cannot listen on {HOST}:{arguments.port} ({error.strerror or error}); "
            f"choose another one: make serve {PORT_ENV_VAR}=<port> (or --port <port>)",
            file=sys.stderr,
        )
        return 1
    print(line, flush=True)
    try:
        model_server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        model_server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
