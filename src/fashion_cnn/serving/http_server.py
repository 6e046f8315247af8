"""The model's HTTP server on 127.0.0.1: a thread per connection behind a deep listen backlog,
bounded reads, and concurrent requests batched into one forward pass of the compiled model.

GET /health or /ping, POST /invocations (fashion_cnn.serving.protocol); every answer is JSON. A client
that stalls or goes away mid-request costs one log line, never a traceback, and never blocks others.
"""

from __future__ import annotations

import functools
import http.server
import json
import sys
import time
import traceback
from typing import Any

import numpy as np

from fashion_cnn.serving import classifier, protocol
from fashion_cnn.serving.batcher import DEFAULT_MAX_IMAGES, MicroBatcher
from fashion_cnn.serving.forward import compiled_forward

HOST = "127.0.0.1"
# Connections the kernel holds until the server accepts them (Linux caps it at net.core.somaxconn,
# 4096 by default). socketserver's default of 5 reset a quarter of a burst of 200 clients.
LISTEN_BACKLOG = 1024
# Seconds a client may stay silent mid-request (request line, headers or body) before it is dropped.
READ_TIMEOUT_SECONDS = 10.0
# Seconds the whole body may take to arrive, however slowly it trickles in.
BODY_SECONDS = 30.0


class ClientGone(Exception):
    """The client closed or reset its connection mid-request: one log line, no answer."""


class ModelServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 around one loaded classifier and its micro-batcher."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        loaded: classifier.Classifier,
        port: int,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        body_seconds: float = BODY_SECONDS,
        max_batch_images: int = DEFAULT_MAX_IMAGES,
    ) -> None:
        super().__init__((HOST, port), ModelHandler)
        self.classifier = loaded
        self.read_timeout = read_timeout
        self.body_seconds = body_seconds
        forward = compiled_forward(loaded.model)
        self.batcher = MicroBatcher(
            functools.partial(loaded.probabilities, forward=forward), max_batch_images
        )
        try:  # Trace the forward pass now, not during the first request.
            self.batcher.probabilities(np.zeros((1, *protocol.IMAGE_SHAPE), dtype=np.float32))
        except BaseException:
            self.server_close()
            raise

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, with the port really bound (port 0 picks a free one)."""
        return f"http://{HOST}:{self.server_address[1]}"

    def classify(self, images: np.ndarray, top: int) -> list[list[dict[str, Any]]]:
        """The top classes of each raw image, its forward pass shared with the requests waiting with it."""
        return classifier.top_classes(self.batcher.probabilities(images), top)

    def server_close(self) -> None:
        """Close the listening socket and stop the batcher."""
        super().server_close()
        if hasattr(self, "batcher"):
            self.batcher.close()

    def handle_error(self, request: Any, client_address: tuple[str, int]) -> None:
        """A connection lost outside a request's own handling: one line; anything else: the traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            when = time.strftime("%d/%b/%Y %H:%M:%S")
            print(
                f"{client_address[0]} - - [{when}] connection lost ({error!r})", file=sys.stderr, flush=True
            )
        else:
            super().handle_error(request, client_address)


class ModelHandler(http.server.BaseHTTPRequestHandler):
    """GET /health or /ping, POST /invocations; every answer is JSON."""

    server: ModelServer

    def setup(self) -> None:
        """The connection's reads time out after the server's read_timeout."""
        self.timeout = self.server.read_timeout
        super().setup()

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
            images, top = protocol.parse_request(self.read_body())
            predictions = self.server.classify(images, top)
        except protocol.RequestError as error:
            self.send_json(error.status, {"error": str(error)})
        except ClientGone as gone:
            self.log_error("client went away: %s; not answered", gone)
            self.close_connection = True
        except Exception as error:  # A bug: the traceback goes to the log, the client gets one line.
            traceback.print_exc()
            self.send_json(500, {"error": f"internal error ({type(error).__name__}: {error})"})
        else:
            self.send_json(200, {"predictions": predictions})

    def read_body(self) -> bytes:
        """The request body; refused without a length, or over MAX_BODY_BYTES (then read and dropped)."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise protocol.RequestError(411, f"a Content-Length header is needed, got {length!r}")
        size = int(length)
        if size > protocol.MAX_BODY_BYTES:
            # A client still sending would miss the answer: read and drop a body of a plausible size.
            if size <= protocol.DRAIN_BYTES:
                self.read_bytes(size, keep=False)
            raise protocol.RequestError(
                413,
                f"the body is {size:,} bytes; "
                f"at most {protocol.MAX_BODY_BYTES:,} ({protocol.MAX_IMAGES} images)",
            )
        return self.read_bytes(size)

    def read_bytes(self, size: int, keep: bool = True) -> bytes:
        """`size` body bytes within read_timeout of silence and body_seconds in all (408 otherwise)."""
        deadline = time.monotonic() + self.server.body_seconds
        chunks, received = [], 0
        while received < size:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(self.server.read_timeout, left))
                chunk = self.rfile.read1(min(size - received, 2**20))
            except TimeoutError:
                self.close_connection = True
                bound = (
                    f"no data for {self.server.read_timeout:g} s"
                    if left > self.server.read_timeout
                    else f"the body took over {self.server.body_seconds:g} s"
                )
                self.log_error(
                    "client stalled: %s after %s of %s body bytes; dropped",
                    bound,
                    f"{received:,}",
                    f"{size:,}",
                )
                raise protocol.RequestError(
                    408, f"{bound} after {received:,} of {size:,} body bytes; the connection is closed"
                ) from None
            except ConnectionError as error:
                raise ClientGone(
                    f"{type(error).__name__} after {received:,} of {size:,} body bytes"
                ) from None
            if not chunk:
                raise ClientGone(f"connection closed after {received:,} of {size:,} body bytes")
            received += len(chunk)
            if keep:
                chunks.append(chunk)
        self.connection.settimeout(self.server.read_timeout)
        return b"".join(chunks)

    def send_json(self, status: int, document: dict[str, Any]) -> None:
        """Answer with `document` as JSON; a client gone by then costs one log line."""
        payload = json.dumps(document).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except ConnectionError as error:
            self.close_connection = True
            self.log_error("client went away before the answer (%r)", error)
