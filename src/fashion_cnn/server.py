"""A tracking server that may answer slowly or go away: its health check, and MLflow logging calls that
fail without stopping the stage (the stage's outputs are complete; one line says what was not logged).
"""

from __future__ import annotations

import collections
import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import mlflow
import requests

from fashion_cnn.errors import FashionCnnError

# How long a remote tracking server may take to answer its health check.
SERVER_TIMEOUT_SECONDS = 5.0


def is_remote(uri: str) -> bool:
    """True for a tracking server URI (http or https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout_seconds: float = SERVER_TIMEOUT_SECONDS) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer or answers with an error
    (MLflow would retry for minutes). A server without /health (behind a proxy) is asked its API."""
    base = uri.rstrip("/")
    for endpoint in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(f"{base}{endpoint}", timeout=timeout_seconds):
                return
        except urllib.error.HTTPError as error:
            if error.code == 404 and endpoint == "/health":
                continue
            raise FashionCnnError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) answered HTTP {error.code} "
                f"{error.reason} on {endpoint.split('?')[0]}: it is not usable; fix the server (or its "
                f"credentials) or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise FashionCnnError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ({reason}); start it "
                f"or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
            ) from None


# What a logging call raises when the store or server fails: MLflow wraps most HTTP errors in
# MlflowException; artifact uploads can surface requests' and the OS's own errors.
LOGGING_ERRORS = (mlflow.exceptions.MlflowException, requests.exceptions.RequestException, OSError)


class LoggingFailures:
    """The MLflow calls of one stage that failed: a lost server costs the run's records, not the outputs."""

    def __init__(self, uri: str = "") -> None:
        self.uri = uri
        self.failed: list[str] = []
        self.first_error = ""
        # Set when a call failed and the server did not answer its health check either; cleared
        # when a later call gets through.
        self.server_gone = False

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs), or None (recorded) when it fails."""
        try:
            if not self.server_gone:
                return function(*args, **kwargs)
            with quick_requests():
                result = function(*args, **kwargs)
            self.server_gone = False
            return result
        except LOGGING_ERRORS as error:
            self.failed.append(getattr(function, "__name__", repr(function)))
            self.first_error = self.first_error or " ".join(str(error).split())[:300]
            if not self.server_gone and is_remote(self.uri):
                self.server_gone = not server_answers(self.uri)
            return None

    def summary(self) -> str:
        """One line naming the failed calls, or '' when every call succeeded."""
        if not self.failed:
            return ""
        counts = collections.Counter(self.failed)
        calls = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in counts.items())
        cause = "the server stopped answering" if self.server_gone else self.first_error
        return (
            f"warning: {len(self.failed)} MLflow logging call(s) to {self.uri} failed ({calls}): {cause}; "
            f"the stage's own outputs are complete, its MLflow run is not"
        )


@contextlib.contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow requests without retries and with the health check's timeout, for a server that is gone:
    each call then fails at once (or comes through if the server is back) instead of stalling."""
    quick = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(SERVER_TIMEOUT_SECONDS)),
    }
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_answers(uri: str) -> bool:
    """Whether a tracking server answers its health check now."""
    try:
        check_server(uri)
    except FashionCnnError:
        return False
    return True


# The stage in progress records its failed calls here (stage_run installs a fresh one).
_failures = LoggingFailures()


def log_safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow logging function; a failure is recorded and reported when the stage ends."""
    return _failures.call(function, *args, **kwargs)


def record_failures(uri: str) -> None:
    """Start recording the failed logging calls of a new stage run against `uri`."""
    global _failures
    _failures = LoggingFailures(uri)


def failure_summary() -> str:
    """One line naming the stage's failed logging calls, or ''."""
    return _failures.summary()
