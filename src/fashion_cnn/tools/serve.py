"""Serve the trained model over HTTP on 127.0.0.1: `python -m fashion_cnn.tools.serve [--port N]`.

POST raw 28x28 grey images (pixel values 0..255, garment light on black, as in Fashion-MNIST) to
/invocations as {"inputs": [image, ...], "top": 3}, an image being 28 rows of 28 numbers (one image
without the outer list works too; "top" is optional, 1..10). The answer is predict's --json
"predictions" for each image: {"predictions": [[{"class": ..., "index": ..., "probability": ...}, ...]]}.
GET /health (or /ping) answers {"status": "ok"}. A bad request gets 400 (413 when too large) and
{"error": "<one line>"}.

The model is data/model/model.keras, loaded through fashion_cnn.serving.classifier like predict does: refused
when it carries code (a Lambda layer or a custom object), then read in Keras safe mode; the server
standardizes with data/prepared/standardization.npz itself.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from fashion_cnn import CLASS_NAMES
from fashion_cnn.data.idx import IMAGE_SIDE
from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.serving import classifier
from fashion_cnn.training import trained_model
from fashion_cnn.utils import paths

HOST = "127.0.0.1"
PORT_ENV_VAR = "SERVE_PORT"
# 5000 is `make ui`'s default port.
DEFAULT_PORT = 5001
# Images per request, and bytes per request body: 1,024 images of 784 values written with full
# float precision take about 16 MB of JSON.
MAX_IMAGES = 1024
MAX_BODY_BYTES = 20 * 2**20
# A larger body is read and dropped before the 413 answer (a fraction of a second on 127.0.0.1); one
# larger still is refused unread, and the client may see the connection reset instead.
DRAIN_BYTES = 256 * 2**20
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
DEFAULT_TOP = 3


class RequestError(Exception):
    """A request the server refuses: the HTTP status and one line saying what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> tuple[np.ndarray, int]:
    """The images (count, 28, 28) float32 of 0..255 and the top-k asked for in a JSON body."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"the body is not JSON ({error})") from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise RequestError(400, 'the body must be a JSON object {"inputs": [image, ...]}')
    unknown = sorted(set(document) - {"inputs", "top"})
    if unknown:
        raise RequestError(400, f"unknown keys {unknown}; the body takes 'inputs' and optionally 'top'")
    top = document.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(CLASS_NAMES):
        raise RequestError(400, f"'top' must be an integer from 1 to {len(CLASS_NAMES)}, got {top!r}")
    try:
        images = np.asarray(document["inputs"])
    except ValueError:  # Rows or images of different lengths.
        images = np.asarray(None)
    expected = f"one image {IMAGE_SHAPE} or a list of them (count, {IMAGE_SIDE}, {IMAGE_SIDE}) of grey levels"
    if images.dtype == object:
        problem = "is not a grid of numbers (rows of different lengths, or nulls)"
        raise RequestError(400, f"'inputs' {problem}; expected {expected}")
    if images.shape[-2:] != IMAGE_SHAPE or images.ndim not in (2, 3):
        raise RequestError(400, f"'inputs' has shape {images.shape}; expected {expected}")
    if images.dtype.kind not in "iuf":
        raise RequestError(400, f"'inputs' must hold numbers (grey levels 0-255), not {images.dtype} values")
    images = images.reshape(-1, *IMAGE_SHAPE).astype(np.float32)  # (count, 28, 28)
    if len(images) == 0:
        raise RequestError(400, f"'inputs' holds no image; expected {expected}")
    if len(images) > MAX_IMAGES:
        raise RequestError(400, f"'inputs' holds {len(images)} images; at most {MAX_IMAGES} per request")
    outside = ~np.isfinite(images) | (images < 0) | (images > 255)
    if outside.any():
        position = tuple(int(index) for index in np.argwhere(outside)[0])
        raise RequestError(
            400,
            f"pixel values must be 0-255 (raw grey levels, not standardized); "
            f"image {position[0]} row {position[1]} column {position[2]} is {images[position]}",
        )
    return images, top


class ModelServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 around one loaded classifier."""

    daemon_threads = True

    def __init__(self, loaded: classifier.Classifier, port: int) -> None:
        super().__init__((HOST, port), ModelHandler)
        self.classifier = loaded
        # One forward pass at a time: requests in parallel would multiply the memory of a batch.
        self.model_lock = threading.Lock()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, with the port really bound (port 0 picks a free one)."""
        return f"http://{HOST}:{self.server_address[1]}"

    def classify(self, images: np.ndarray, top: int) -> list[list[dict[str, Any]]]:
        """The top classes of each raw image, one forward pass at a time."""
        with self.model_lock:
            return self.classifier.classify(images, top)


class ModelHandler(http.server.BaseHTTPRequestHandler):
    """GET /health or /ping, POST /invocations; every answer is JSON."""

    server: ModelServer
    # Seconds a client may stay silent mid-request before its connection is dropped.
    timeout = 60

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to.
        if self.path in ("/health", "/ping"):
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"error": f"no {self.path}; GET /health, POST /invocations"})

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to.
        if self.path != "/invocations":
            self.send_json(404, {"error": f"no {self.path}; POST /invocations"})
            return
        try:
            images, top = parse_request(self.read_body())
            self.send_json(200, {"predictions": self.server.classify(images, top)})
        except RequestError as error:
            self.send_json(error.status, {"error": str(error)})
        except Exception as error:  # A bug: the traceback goes to the log, the client gets one line.
            traceback.print_exc()
            self.send_json(500, {"error": f"internal error ({type(error).__name__}: {error})"})

    def read_body(self) -> bytes:
        """The request body; refused without a length, or over MAX_BODY_BYTES (then read and dropped)."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise RequestError(411, f"a Content-Length header is needed, got {length!r}")
        size = int(length)
        if size > MAX_BODY_BYTES:
            # A client still sending would miss the answer: read and drop a body of a plausible size.
            remaining = size if size <= DRAIN_BYTES else 0
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 2**20))):
                remaining -= len(chunk)
            raise RequestError(
                413, f"the body is {size:,} bytes; at most {MAX_BODY_BYTES:,} ({MAX_IMAGES} images)"
            )
        return self.rfile.read(size)

    def send_json(self, status: int, document: dict[str, Any]) -> None:
        """Answer with `document` as JSON."""
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def start_line(project: paths.ProjectPaths, model_server: ModelServer) -> str:
    """What is served and where: the model file, its MLflow run, the URL."""
    try:
        run = f"MLflow run {trained_model.read_training_run(project).run_id}"
    except DataError as error:  # The model is served all the same; the line says why no run is named.
        run = f"MLflow run unknown: {error}"
    model_file = model_server.classifier.model_path
    return f"serving {model_file} ({run}) on {model_server.url}/invocations"


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
    arguments = parser.parse_args(argv)
    try:
        project = paths.project_paths()
        loaded = classifier.load_classifier(project.model_file, project.prepared_dir)
        model_server = ModelServer(loaded, arguments.port)
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
    print(start_line(project, model_server), flush=True)
    try:
        model_server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        model_server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
