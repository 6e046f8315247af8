"""A tracking server that misbehaves on demand: a real HTTP server on 127.0.0.1 for test_tracking_faults.py.

It answers every request with a status, hangs (accepts the connection, never answers), answers
late, or passes requests on to a real `mlflow server` until a request the test names has gone
through, and then fails in the way the test chose: a status, a hang, or going away (its port stops
listening; `come_back` listens on it again).
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

# Headers that belong to one connection, not to the request or answer passed on.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
HOP_BY_HOP |= {"proxy-authorization", "proxy-authenticate", "content-length", "server", "date"}
# How long a proxied request may take at the real server.
UPSTREAM_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Behaviour:
    """What the server does with each request.

    mode: "status" (answer `status`, or `health_status` on /health), "hang" (never answer),
    "proxy" (pass it on to `upstream`), "drop" (close the connection unanswered).
    """

    mode: str = "status"
    status: int = 200
    health_status: int | None = None
    # Seconds to wait before doing the above.
    delay_seconds: float = 0.0
    # A Retry-After header on error answers (seconds), as rate-limiting servers send.
    retry_after: int | None = None
    upstream: str = ""


# (method, path, body) of a request that went through: whether the failure starts now.
Trigger = Callable[[str, str, bytes], bool]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer

    def _handle(self) -> None:
        body = self._read_body()
        owner = self.server.owner
        behaviour = owner.behaviour
        owner.requests.append(f"{self.command} {self.path}")
        if behaviour.delay_seconds:
            owner.release.wait(behaviour.delay_seconds)
        if behaviour.mode == "hang":
            owner.release.wait()
            self.close_connection = True
            return
        if behaviour.mode == "drop":
            self.close_connection = True
            return
        if behaviour.mode == "proxy":
            self._proxy(behaviour.upstream, body)
            return
        status = behaviour.status
        if self.path.split("?")[0] == "/health" and behaviour.health_status is not None:
            status = behaviour.health_status
        owner.after_request(self.command, self.path, body)
        self._answer(status, behaviour.retry_after)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server's names.

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, retry_after: int | None) -> None:
        error = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"the test server answers {status}"}
        payload = b"{}" if status < 400 else json.dumps(error).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None and status >= 400:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)

    def _proxy(self, upstream: str, body: bytes) -> None:
        target = urllib.parse.urlsplit(upstream)
        connection = http.client.HTTPConnection(
            target.hostname, target.port, timeout=UPSTREAM_TIMEOUT_SECONDS
        )
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        finally:
            connection.close()
        # Before the client has this answer, so its next request already meets the failure.
        self.server.owner.after_request(self.command, self.path, body)
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature.
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: MisbehavingServer, port: int) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up close their end; that is what these tests make them do.
        pass


class MisbehavingServer:
    """The server; set its behaviour with answer(), hang() and proxy(), then read `url` and `requests`."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[str] = []
        # Set on close: wakes every hanging or delayed handler.
        self.release = threading.Event()
        self._trigger: Trigger | None = None
        self._failure: Callable[[], None] | None = None
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        self._http = _HttpServer(self, self.port)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # ---- behaviours ----

    def answer(
        self,
        status: int,
        health_status: int | None = None,
        delay_seconds: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        """Answer every request with `status` (/health with `health_status` when given)."""
        self.behaviour = Behaviour("status", status, health_status, delay_seconds, retry_after)

    def hang(self) -> None:
        """Accept each connection and read the request, never answer."""
        self.behaviour = Behaviour("hang")

    def proxy(self, upstream: str, delay_seconds: float = 0.0) -> None:
        """Pass every request on to a real server at `upstream` (after `delay_seconds`)."""
        self.behaviour = Behaviour("proxy", delay_seconds=delay_seconds, upstream=upstream)

    def fail_after(self, trigger: Trigger, failure: Callable[[], None]) -> None:
        """Once a request matches `trigger`, call `failure` (e.g. self.go_away) before answering it."""
        self._trigger, self._failure = trigger, failure

    def after_request(self, method: str, path: str, body: bytes) -> None:
        """Called by the handler once it has the answer to a request, before sending it: starts the
        failure if the request matches."""
        trigger, failure = self._trigger, self._failure
        if trigger is not None and failure is not None and trigger(method, path, body):
            self._trigger = self._failure = None
            failure()

    # ---- going away and coming back ----

    def go_away(self) -> None:
        """Stop listening: new connections are refused (requests already in flight are dropped)."""
        self.behaviour = Behaviour("drop")
        http_server, self._http = self._http, None
        if http_server is not None:
            # shutdown() waits for serve_forever's thread, which is never a handler's.
            http_server.shutdown()
            http_server.server_close()

    def come_back(self, upstream: str) -> None:
        """Listen on the same port again, passing requests on to `upstream`."""
        self.proxy(upstream)
        if self._http is None:
            self._listen()

    def close(self) -> None:
        self.release.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
