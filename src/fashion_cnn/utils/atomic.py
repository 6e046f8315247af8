"""Atomic file writes: a temp file in the same folder, then os.replace, so readers never see half a file.

`together()` groups several writes: their renames wait until every file of the group is written, so
an error or an interruption leaves all the previous files, never a mix of old and new ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashion_cnn.errors import FashionCnnError

# Ctrl-C and `kill`: both stop a stage (stage.stage_main turns SIGTERM into KeyboardInterrupt).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The (temp file, final path) renames of the innermost `together()` block, or None outside one.
_pending_renames: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "pending_renames", default=None
)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed.

    `suffix` is for writers that insist on an extension (Keras saves only to `*.keras`). An OSError
    (disk full, read-only folder) becomes a FashionCnnError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(handle)
    temp_path = Path(temp_name)
    # mkstemp creates 0600; give the final file the usual permissions under the current umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_path, 0o666 & ~umask)
    try:
        yield temp_path
        pending = _pending_renames.get()
        if pending is None:
            os.replace(temp_path, path)
        else:
            pending.append((temp_path, path))
    except OSError as error:
        # A full disk, a quota, a read-only or vanished folder: the user's to fix, so one line.
        temp_path.unlink(missing_ok=True)
        raise write_error(path, error) from None
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Write every file of the block with atomic_path, then rename them all at once (signals held back).

    A failure or an interruption inside the block removes the temp files and replaces nothing.
    """
    pending: list[tuple[Path, Path]] = []
    token = _pending_renames.set(pending)
    try:
        yield
    except BaseException:
        for temp_path, _ in pending:
            temp_path.unlink(missing_ok=True)
        raise
    finally:
        _pending_renames.reset(token)
    with signals_deferred():
        for temp_path, path in pending:
            try:
                os.replace(temp_path, path)
            except OSError as error:
                temp_path.unlink(missing_ok=True)
                raise write_error(path, error) from None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM until the block ends: for writes of several files that belong together.

    Each file is atomic on its own; a group of them (a training checkpoint) is only consistent when
    none is missing, so an interruption waits until the group is written. Main thread only (Python
    runs signal handlers there); elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        number: signal.signal(number, lambda number, frame: received.append(number))
        for number in INTERRUPT_SIGNALS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        # Delivered again now, to the handler that was in place (KeyboardInterrupt in a stage).
        signal.raise_signal(received[0])


def write_error(path: Path, error: OSError) -> FashionCnnError:
    """One line naming the file that could not be written, why, and that nothing half-written is left."""
    reason = error.strerror or str(error)
    advice = " (free space on that disk, then rerun)" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return FashionCnnError(f"{path}: could not write it: {reason}{advice}; no partial file was left")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (fsynced before the rename)."""
    with atomic_path(path) as temp_path, open(temp_path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write `payload` as indented JSON atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
