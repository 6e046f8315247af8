"""Quiet by default: TensorFlow's C++ start-up and runtime chatter kept off the terminal.

TensorFlow writes some lines straight to file descriptor 2 from C++, before its log level applies
(the absl banner, oneDNN and CUDA probing, tensorflow/tensorflow#100442) or as "errors" that are
not (`failed call to cuInit` on every CPU machine, a NodeDef attribute newer than the binary).
`install()` routes descriptor 2 through a filter thread that drops exactly those lines and passes
every other line through; Python's own stderr (warnings, the one-line `error:` messages) keeps
writing to the terminal directly. FASHION_CNN_VERBOSE=1 turns the filter off.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

VERBOSE_ENV_VAR = "FASHION_CNN_VERBOSE"
# TensorFlow's C++ log level: 2 hides its INFO and WARNING lines (ERROR and FATAL stay).
TF_LOG_LEVEL = "2"
# Lines TensorFlow writes from C++ that say nothing about this run (matched anywhere in the line).
NOISE = re.compile(
    "|".join(
        (
            r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"oneDNN custom operations are on",
            r"cudart_stub\.cc.*Could not find cuda drivers",
            r"failed call to cuInit",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"TF-TRT Warning",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"NodeDef mentions attribute use_unbounded_threadpool",
            r"cpu_feature_guard\.cc",
        )
    )
)


def verbose() -> bool:
    """Whether the user asked for everything (FASHION_CNN_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV_VAR, "") not in ("", "0")


def is_noise(line: str) -> bool:
    """Whether a line of stderr is TensorFlow chatter the filter drops."""
    return NOISE.search(line) is not None


def _forward(read_end: int, terminal: int) -> None:
    """Copy lines from the pipe to the terminal, dropping noise, until the pipe closes."""
    with open(read_end, "rb", closefd=True) as pipe:
        for raw in pipe:
            if not is_noise(raw.decode("utf-8", errors="replace")):
                os.write(terminal, raw)


def install() -> None:
    """Filter descriptor 2 for the rest of this process (once; not with FASHION_CNN_VERBOSE=1).

    Called by the stages' and tools' packages when Python runs one of them (`python -m ...`).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    if verbose() or getattr(install, "done", False):
        return
    install.done = True  # type: ignore[attr-defined]
    terminal = os.dup(2)
    # Python's stderr writes straight to the terminal: its lines are never held up or lost.
    sys.stderr.flush()
    sys.stderr = os.fdopen(terminal, "w", buffering=1, errors="backslashreplace", closefd=False)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, terminal), daemon=True)
    forwarder.start()

    def drain() -> None:
        # Close descriptor 2's pipe so the thread sees the end and writes what is left.
        os.dup2(terminal, 2)
        forwarder.join(timeout=2)

    atexit.register(drain)


def uninstall() -> None:
    """Give descriptor 2 back to the terminal (before exec'ing another program, say)."""
    if getattr(install, "done", False):
        sys.stderr.flush()
        os.dup2(sys.stderr.fileno(), 2)
