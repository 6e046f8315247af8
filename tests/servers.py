"""Real servers on 127.0.0.1 for the tests: an HTTP mirror of Fashion-MNIST files and `mlflow server`.

conftest.py turns them into fixtures (http_mirror, mlflow_server, mlflow_server_factory).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The console scripts (dvc, mlflow) and the `python` that dvc.yaml's commands call live beside the
# test interpreter.
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- a real HTTP server ----


@functools.cache
def gzip_bomb(total_bytes: int) -> bytes:
    """A valid .gz of `total_bytes` zeros (a multiple of 1 MiB), about 1,000 times smaller.

    One compressed block of 1 MiB of zeros after a full flush is the same bytes every time, so the
    bomb is that block repeated: 1 GiB takes a third of a second, not the seconds zlib would.
    """
    block = bytes(1 << 20)
    count, remainder = divmod(total_bytes, len(block))
    if remainder:
        raise ValueError(f"gzip_bomb: {total_bytes} is not a multiple of {len(block)}")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: we frame it
    deflated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # magic, deflate, no flags, mtime 0
    trailer = struct.pack("<II", crc, total_bytes & 0xFFFFFFFF)
    return header + deflated * count + compressor.flush() + trailer


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<file>.gz answers the file as a mirror in that state would (see HttpMirror)."""

    server: MirrorServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to.
        self.server.requests.append(self.path)
        _, mode, file_name = (self.path.split("/", 2) + ["", ""])[:3]
        payload = self.server.files.get(file_name.removesuffix(".gz"))
        if payload is None or mode == "missing":
            self.send_error(404, "Not Found")
        elif mode == "good":
            self._send(payload)
        elif mode == "recompressed":
            # Another mirror's gzip of the same IDX bytes: different .gz bytes, same content.
            self._send(gzip.compress(gzip.decompress(payload), compresslevel=1, mtime=1234567890))
        elif mode == "corrupt":
            # Right size, wrong content: only the checksum can tell.
            content = bytearray(gzip.decompress(payload))
            content[-1] ^= 0xFF
            self._send(gzip.compress(bytes(content), mtime=0))
        elif mode == "truncated":
            # The connection drops halfway: Content-Length promises more than arrives.
            self._send(payload, body=payload[: len(payload) // 2])
        elif mode == "slow":
            self.server.release.wait(self.server.slow_seconds)
            self._send(payload)
        elif mode == "stalled":
            # Headers and half the body arrive, then nothing.
            self._send(payload, body=payload[: len(payload) // 2])
            self.server.release.wait(self.server.slow_seconds)
        elif mode == "trickle":
            # A byte at a time, each in time for a per-read timeout: only a deadline stops it. After
            # `trickle_bytes` it hangs up, so that a client without a deadline fails, not hangs.
            self._send(payload, body=b"")
            for offset in range(min(len(payload), self.server.trickle_bytes)):
                if self.server.release.wait(self.server.trickle_seconds):
                    return
                self.wfile.write(payload[offset : offset + 1])
                self.wfile.flush()
        elif mode == "redirect":
            self._redirect(f"/good/{file_name}")
        elif mode == "redirect-loop":
            self._redirect(self.path)
        elif mode == "unsized":
            # No Content-Length: the body ends when the connection closes (HTTP/1.0).
            self._send(payload, length=None)
        elif mode == "garbled-length":
            self._send(payload, length="twelve")
        elif mode == "oversize":
            # Announces 10 GB; a client that reads it all fills its memory.
            self._send(payload, length=10**10, body=b"")
        elif mode == "endless":
            # No Content-Length and, for a client, no end: zeros until it hangs up.
            self._send(payload, length=None, body=b"")
            self._stream_zeros()
        elif mode == "lying":
            # Content-Length says the payload's size, then far more bytes follow.
            self._send(payload)
            self._stream_zeros()
        elif mode == "bomb":
            # A small .gz (under any size cap on the body) of far more zeros than the file holds.
            self._send(gzip_bomb(self.server.bomb_bytes))
        else:
            self.send_error(400, f"unknown mode {mode!r}")

    def _send(self, payload: bytes, body: bytes | None = None, length: int | str | None = -1) -> None:
        """Answer 200 with `body` (default: the payload) and a Content-Length of `length` (default:
        the payload's; None: no header)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        if length is not None:
            self.send_header("Content-Length", str(len(payload) if length == -1 else length))
        self.end_headers()
        self.wfile.write(payload if body is None else body)
        self.wfile.flush()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream_zeros(self) -> None:
        """Zeros until the client hangs up, the server stops or `endless_bytes` went out (so that a
        client without a size cap fails rather than hangs)."""
        block = bytes(64 << 10)
        for _ in range(self.server.endless_bytes // len(block)):
            if self.server.release.is_set():
                return
            self.wfile.write(block)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the signature http.server calls.
        pass


class MirrorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        self.slow_seconds = 10.0
        # Under any per-read timeout a test sets, so that only the overall deadline can stop it.
        self.trickle_seconds = 0.05
        self.trickle_bytes = 100
        # "Without end" for a client: far past any file's size cap.
        self.endless_bytes = 256 << 20
        # 48 MiB of zeros is a 50 kB .gz: under the body cap of even the smallest file.
        self.bomb_bytes = 48 << 20

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out close the socket on slow handlers; that is the point, not an error.
        pass


@dataclass
class HttpMirror:
    """A live mirror on 127.0.0.1: put .gz payloads in `files` (by name without .gz), pick a mode per URL.

    Modes: good, recompressed, missing (404), corrupt (checksum mismatch), truncated (connection cut
    halfway), slow (no answer for `slow_seconds`), stalled (half the body, then silence), trickle (a
    byte every `trickle_seconds`, then it hangs up after `trickle_bytes`), redirect (302 to good),
    redirect-loop (302 to itself), unsized (no Content-Length), garbled-length (Content-Length:
    twelve), oversize (Content-Length of 10 GB), endless (no length, `endless_bytes` of zeros), lying
    (the payload's length, then `endless_bytes` of zeros), bomb (a .gz of `bomb_bytes` zeros).
    """

    server: MirrorServer

    @property
    def files(self) -> dict[str, bytes]:
        return self.server.files

    @property
    def requests(self) -> list[str]:
        """Paths requested so far, in order."""
        return self.server.requests

    def url(self, mode: str) -> str:
        """Base URL of a mirror in `mode`; a file is fetched from <url>/<name>.gz."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{mode}"

    @functools.cached_property
    def unreachable_url(self) -> str:
        """A URL on a local port where nothing listens (connection refused, like no network)."""
        return f"http://127.0.0.1:{free_port()}/fashion-mnist"


# ---- a real MLflow server ----

# How long `mlflow server` may take to answer /health; it imports MLflow's whole server stack.
MLFLOW_SERVER_START_SECONDS = 120


@dataclass
class MlflowServer:
    """A running `mlflow server` on 127.0.0.1: SQLite store and proxied artifact root in `directory`."""

    url: str
    process: subprocess.Popen
    directory: Path

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the server's stdout and stderr, for failure messages."""
        return self.log_file.read_text(errors="replace")[-characters:] if self.log_file.exists() else ""

    def stop(self, signal_number: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (its own process group): the signal, then SIGKILL after 5 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal_number)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Workers may outlive the master by a moment; none may keep the port.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def wait_for_health(server: MlflowServer, timeout_seconds: float) -> None:
    """Poll /health until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(
        f"mlflow server did not answer {server.url}/health in {timeout_seconds} s:\n{server.log_tail()}"
    )


@contextlib.contextmanager
def running_mlflow_server(directory: Path) -> Iterator[MlflowServer]:
    """Start the real `mlflow server` CLI on a free local port, its store in `directory`; stop it after."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(VENV_BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        # Artifacts go through the server (mlflow-artifacts:/), as a team server's would.
        "--serve-artifacts", "--artifacts-destination", str(directory / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    environment["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # The job runner serves GenAI features through 8 more processes; tracking and the UI need none.
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(directory / "server.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=directory, stdout=log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True,
        )  # fmt: skip
    server = MlflowServer(f"http://127.0.0.1:{port}", process, directory)
    try:
        wait_for_health(server, MLFLOW_SERVER_START_SECONDS)
        yield server
    finally:
        server.stop()
