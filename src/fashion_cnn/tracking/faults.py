"""A tracking server that may answer with an error, slowly, or not at all: its check before a stage
starts, and MLflow logging calls during a stage that fail without stopping it.

The policy (docs/tracking.md): at the start, a server that is not healthy stops the stage in one line
naming the URI and what it answered; in the middle, the stage goes on, writes its outputs, and its
last line says which calls were not logged and how to log them later.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import mlflow
import requests

from fashion_cnn.errors import FashionCnnError
from fashion_cnn.utils import environment

# How long a tracking server may take to answer the check before a stage starts.
SERVER_TIMEOUT_SECONDS = 5.0
# Once a server has stopped answering mid-stage: how long each probe of whether it is back may take,
# and how often one is made. Logging calls in between are skipped at once instead of waiting.
PROBE_TIMEOUT_SECONDS = 2.0
PROBE_INTERVAL_SECONDS = 30.0
# What the check asks: the health endpoint (a proxy may not pass it on: 404 is allowed) and the API
# the stages use (it must answer, with the user's credentials).
HEALTH_ENDPOINT = "/health"
API_ENDPOINT = "/api/2.0/mlflow/experiments/search?max_results=1"


def is_remote(uri: str) -> bool:
    """True for a tracking server URI (http or https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def _credentials() -> dict[str, str]:
    """The Authorization header MLflow's client sends, from the same environment variables."""
    username, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if username and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    return {}


def server_problem(uri: str, timeout_seconds: float = SERVER_TIMEOUT_SECONDS) -> str:
    """What is wrong with a tracking server, e.g. 'answered HTTP 503 Service Unavailable on /health',
    or '' when it answers its health check and its API. Never takes much more than 2 x timeout."""
    base = uri.rstrip("/")
    for endpoint in (HEALTH_ENDPOINT, API_ENDPOINT):
        path = endpoint.split("?")[0]
        request = urllib.request.Request(f"{base}{endpoint}", headers=_credentials())
        try:
            with urllib.request.urlopen(request, timeout=timeout_seconds):
                pass
        except urllib.error.HTTPError as error:
            if error.code == 404 and endpoint == HEALTH_ENDPOINT:
                continue
            return f"answered HTTP {error.code} {error.reason} on {path}"
        # URLError and TimeoutError are OSErrors; a garbled answer is an HTTPException.
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                return f"did not answer {path} within {timeout_seconds:g} s"
            return f"is unreachable ({reason or type(error).__name__})"
    return ""


def check_server(uri: str, timeout_seconds: float = SERVER_TIMEOUT_SECONDS) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer, answers too slowly or
    answers with an error (MLflow's client would retry for minutes). Never taken for healthy: 5xx,
    401, 403 and any other error status."""
    problem = server_problem(uri, timeout_seconds)
    if not problem:
        return
    if " HTTP 401 " in problem or " HTTP 403 " in problem:
        fix = "check its credentials (MLFLOW_TRACKING_USERNAME and _PASSWORD, or MLFLOW_TRACKING_TOKEN)"
    elif problem.startswith("is unreachable"):
        fix = "start it"
    else:
        fix = "fix or restart the server"
    raise FashionCnnError(
        f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) {problem}: it is not usable; {fix}, "
        f"or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
    )


# What a logging call raises when the store or server fails: MLflow wraps most HTTP errors in
# MlflowException; artifact uploads can surface requests' and the OS's own errors.
LOGGING_ERRORS = (mlflow.exceptions.MlflowException, requests.exceptions.RequestException, OSError)


class LoggingFailures:
    """The MLflow calls of one stage that failed or were skipped: a lost server costs the run's
    records, not the outputs."""

    def __init__(self, uri: str = "", log_later: str = "") -> None:
        self.uri = uri
        # How to log what was not logged, for the summary line (tracking.stage_run sets it).
        self.log_later = log_later
        self.failed: list[str] = []
        self.first_error = ""
        # What the server's check said when a call failed; kept for the summary.
        self.problem = ""
        # Set when a call failed and the server failed its check too; cleared once a probe passes.
        self.server_gone = False
        self.next_probe = 0.0

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs), or None (recorded) when it fails or the server is still gone."""
        if self.server_gone and not self._server_back():
            self.failed.append(getattr(function, "__name__", repr(function)))
            return None
        return self.attempt(function, *args, **kwargs)

    def attempt(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs) now, even while the server is gone; None (recorded) if it fails."""
        try:
            return function(*args, **kwargs)
        except LOGGING_ERRORS as error:
            self.failed.append(getattr(function, "__name__", repr(function)))
            self.first_error = self.first_error or " ".join(str(error).split())[:300]
            if (
                is_remote(self.uri)
                and not self.server_gone
                and (problem := server_problem(self.uri, PROBE_TIMEOUT_SECONDS))
            ):
                self.problem, self.server_gone = problem, True
                self.next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
            return None

    def _server_back(self) -> bool:
        """Whether a gone server answers again; asked at most every PROBE_INTERVAL_SECONDS."""
        if time.monotonic() < self.next_probe:
            return False
        if server_problem(self.uri, PROBE_TIMEOUT_SECONDS):
            self.next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
            return False
        self.server_gone = False
        return True

    def summary(self) -> str:
        """One line naming the calls not logged, why, and how to log them later; '' when none failed."""
        if not self.failed:
            return ""
        counts = collections.Counter(self.failed)
        calls = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in counts.items())
        cause = f"the server {self.problem}" if self.problem else self.first_error
        later = f"; {self.log_later}" if self.log_later else ""
        failed = f"{len(self.failed)} MLflow logging call(s) to {self.uri} failed ({calls})"
        return f"warning: {failed}: {cause}{later}"


@contextlib.contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow requests without retries and with the probe's timeout, for a server that is gone."""
    quick = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(PROBE_TIMEOUT_SECONDS)),
    }
    with environment.variables_set(quick):
        yield


# The stage in progress records its failed calls here (stage_run installs a fresh one).
_failures = LoggingFailures()


def log_safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow logging function; a failure is recorded and reported when the stage ends."""
    return _failures.call(function, *args, **kwargs)


def end_run(status: str) -> None:
    """End the active MLflow run with `status`. Unlike other calls it is made even while the server
    is gone (one quick attempt), since it also forgets the run in this process, so that a next run
    (a sweep's next job) can start."""
    if not _failures.server_gone:
        log_safely(mlflow.end_run, status=status)
        return
    # mlflow.end_run forgets the run before it tells the server.
    with quick_requests():
        _failures.attempt(mlflow.end_run, status=status)


def record_failures(uri: str) -> None:
    """Start recording the failed logging calls of a new stage run against `uri`."""
    global _failures
    _failures = LoggingFailures(uri)


def set_log_later(text: str) -> None:
    """How the current stage's unlogged records can be logged later (the end of the summary line)."""
    _failures.log_later = text


def failure_summary() -> str:
    """One line naming the stage's failed logging calls, or ''."""
    return _failures.summary()


def failure_cause() -> str:
    """Why the stage's first logging call failed (what the server's check said, else the error), or ''."""
    if not _failures.failed:
        return ""
    return f"the server {_failures.problem}" if _failures.problem else _failures.first_error
