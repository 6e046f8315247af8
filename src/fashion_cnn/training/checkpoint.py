"""Resumable training: Keras's BackupAndRestore plus the state it does not keep (dropout RNG, history).

Keras's `BackupAndRestore` saves the weights, the optimizer's variables and the epoch count after
every epoch and restores them when `fit` starts again. It does not save the dropout layers' random
state (a `SeedGenerator` per layer, advanced once per training step), so a resumed run would draw the
dropout masks of epoch 1 again; nor does it know the per-epoch history rows this project reports.
`ResumableTraining` saves both beside Keras's files, so that with deterministic settings a resumed run
ends with exactly the metrics of an uninterrupted one. (The training batches need nothing: each
epoch's order is drawn from (seed, epoch), and `completed_epochs` tells the input pipeline where to start.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fashion_cnn.errors import FashionCnnError
from fashion_cnn.tracking import record
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import records
from fashion_cnn.utils.atomic import signals_deferred, write_json_atomic, write_text_atomic

# The files Keras's BackupAndRestore writes after each epoch: the weights and optimizer variables,
# and {"epoch": completed epochs, "batch": 0}.
KERAS_WEIGHTS_FILE = "latest.weights.h5"
KERAS_METADATA_FILE = "training_metadata.json"
FINGERPRINT_FILE = "fingerprint.txt"
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
# resume_state_0003.json: the state this class adds after epoch 3.
STATE_FILE_PREFIX = "resume_state_"
# The SHA-256 and size of KERAS_WEIGHTS_FILE as saved with a state file: an HDF5 file has no checksum
# of its own.
WEIGHTS_DIGEST_KEY = "weights_sha256"
WEIGHTS_SIZE_KEY = "weights_bytes"


def fingerprint(config: ProjectConfig, *arrays: np.ndarray) -> str:
    """SHA-256 of what decides the training trajectory: seed, model, train params and the data."""
    digest = hashlib.sha256()
    decisive = {key: config.model_dump(mode="json")[key] for key in ("seed", "model", "train")}
    digest.update(json.dumps(decisive, sort_keys=True).encode())
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def completed_epochs(directory: Path, run_fingerprint: str) -> int:
    """The epochs a checkpoint in `directory` holds for this run: 0 when none, or one of another run
    (ResumableTraining discards that when training starts).

    A checkpoint of this run is checked file by file before anything is restored: a damaged one
    stops training with a FashionCnnError naming the file, instead of resuming from it.
    """
    fingerprint_file = directory / FINGERPRINT_FILE
    if not fingerprint_file.is_file():
        return 0
    hint = rebuild_hint(directory)
    saved = records.read_text(fingerprint_file, hint).strip()
    if not FINGERPRINT.fullmatch(saved):
        if re.fullmatch(r"[0-9a-f]{1,63}", saved):
            problem = f"truncated: {len(saved)} of a SHA-256 fingerprint's 64 hexadecimal digits"
        else:
            problem = f"corrupt: {saved[:20]!r} is not a SHA-256 fingerprint (64 hexadecimal digits)"
        raise FashionCnnError(f"{fingerprint_file}: {problem}; {hint}")
    metadata_file = directory / KERAS_METADATA_FILE
    if saved != run_fingerprint or not metadata_file.exists():
        return 0
    epochs = records.read_json_object(metadata_file, {"epoch": int}, hint)["epoch"]
    if epochs < 1:
        raise FashionCnnError(f"{metadata_file}: epoch {epochs} is not a completed epoch; {hint}")
    state_file = directory / f"{STATE_FILE_PREFIX}{epochs:04d}.json"
    if not state_file.is_file():
        raise FashionCnnError(
            f"{metadata_file}: says {epochs} epochs are done but {state_file.name} is missing (files of "
            f"different runs or epochs); {hint}"
        )
    check_state(state_file, epochs, directory / KERAS_WEIGHTS_FILE, hint)
    return epochs


def check_state(state_file: Path, epochs: int, weights_file: Path, hint: str) -> None:
    """A FashionCnnError unless the state file is the one written after `epochs` epochs together
    with the weights file beside it (its SHA-256, when recorded, matches)."""
    state = records.read_json_object(state_file, {"epoch": int, "rows": list, "random_states": dict}, hint)
    if state["epoch"] != epochs or len(state["rows"]) != epochs:
        raise FashionCnnError(
            f"{state_file}: holds epoch {state['epoch']} with {len(state['rows'])} history rows where "
            f"epoch {epochs} belongs (files of different runs or epochs); {hint}"
        )
    for name, value in state["random_states"].items():
        if np.asarray(value).dtype.kind not in "iuf":
            raise FashionCnnError(f"{state_file}: random state {name!r} is not numbers; {hint}")
    if not weights_file.is_file():
        raise FashionCnnError(f"{weights_file}: missing beside {state_file.name}; {hint}")
    # A checkpoint written before the digest was recorded is resumed without this check.
    recorded = state.get(WEIGHTS_DIGEST_KEY)
    if recorded is not None and records.sha256(weights_file) != recorded:
        size, saved_size = weights_file.stat().st_size, state.get(WEIGHTS_SIZE_KEY)
        if size == 0:
            problem = "empty file"
        elif isinstance(saved_size, int) and size < saved_size:
            problem = f"truncated or of another run ({size:,} of {saved_size:,} bytes)"
        else:
            problem = "corrupt or of another run"
        raise FashionCnnError(
            f"{weights_file}: {problem}: its SHA-256 differs from the one {state_file.name} recorded when "
            f"it was saved; {hint}"
        )


def check_writable(directory: Path) -> None:
    """A FashionCnnError unless the checkpoint can be saved in `directory` (a read-only disk, a file
    in its place): found before the first epoch, not at its end. The probe is an empty folder made and
    removed in `directory` or, before its first run, in its nearest existing parent."""
    existing = next(path for path in [directory, *directory.parents] if path.exists())
    fix = "make it writable" if existing.is_dir() else f"move {existing} aside"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as error:
        raise FashionCnnError(
            f"{directory}: the training checkpoint cannot be saved there ({existing}: {error.strerror}); "
            f"{fix}, or run with train.checkpoint=false (an interrupted run then starts over)"
        ) from None


def rebuild_hint(directory: Path) -> str:
    """What to do about a damaged checkpoint: it is not a DVC output, so nothing restores it."""
    return f"delete {directory} to train from the first epoch"


def random_states(model: keras.Model) -> dict[str, keras.Variable]:
    """The model's variables that are not weights (the SeedGenerator states of its dropout layers),
    by layer and variable name, e.g. '08_dropout/seed_generator_state'.

    Not by the variable's path: Keras numbers SeedGenerators per process ('seed_generator_3/...'),
    so a path depends on how many models the process built before.
    """
    weight_ids = {id(weight) for weight in model.weights}
    return {
        f"{layer.name}/{variable.name}": variable
        for layer in model.layers
        for variable in layer.variables
        if id(variable) not in weight_ids
    }


class ResumableTraining(keras.callbacks.BackupAndRestore):
    """Save the training state after every epoch to `directory`; resume from it when `fit` starts.

    `report` is the EpochReport of the run: its `rows` (one per completed epoch) are saved with
    the state and handed back on resume, so the history covers every epoch. A checkpoint written
    for other params or data (another `fingerprint`) is discarded rather than resumed.
    """

    def __init__(self, directory: Path, run_fingerprint: str, report: Any, first_epoch: int = 0) -> None:
        # double_checkpoint keeps the previous epoch's files, used when the latest ones are unreadable.
        super().__init__(backup_dir=str(directory), double_checkpoint=True, delete_checkpoint=False)
        self.directory = directory
        self.run_fingerprint = run_fingerprint
        self.report = report
        self.first_epoch = first_epoch  # where the input pipeline starts (completed_epochs)

    # This class saves per epoch only: it keeps the base class's no-op batch hook, not BackupAndRestore's
    # per-batch save check. Keras 3 reads `_is_default` on the hooks to decide whether batch callbacks
    # may run off the training loop (CallbackList._configure_async_dispatch; the TensorFlow backend of
    # Keras 3.15 runs them in the loop whatever the callbacks define).
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end

    def state_file(self, completed_epochs: int) -> Path:
        return self.directory / f"{STATE_FILE_PREFIX}{completed_epochs:04d}.json"

    def on_train_begin(self, logs: dict | None = None) -> None:
        fingerprint_file = self.directory / FINGERPRINT_FILE
        if self.directory.exists() and (
            not fingerprint_file.is_file() or fingerprint_file.read_text() != self.run_fingerprint
        ):
            print(f"discarding the checkpoint in {self.directory}: it is of other params or data", flush=True)
            shutil.rmtree(self.directory)
        super().on_train_begin(logs)
        metadata_file = self.directory / KERAS_METADATA_FILE
        hint = rebuild_hint(self.directory)
        completed = (
            records.read_json_object(metadata_file, {"epoch": int}, hint)["epoch"]
            if metadata_file.is_file()
            else 0
        )
        if completed != self.first_epoch:
            raise FashionCnnError(
                f"{self.directory}: Keras restored the state after epoch {completed} but the training "
                f"batches start at epoch {self.first_epoch + 1}; delete {self.directory} to train from "
                "the first epoch"
            )
        if completed:
            self.restore(completed)
        else:
            write_text_atomic(fingerprint_file, self.run_fingerprint)

    def restore(self, completed: int) -> None:
        """After Keras restored weights, optimizer and epoch: the dropout RNG states and the history."""
        path = self.state_file(completed)
        try:
            state = records.read_json_object(
                path, {"rows": list, "random_states": dict}, rebuild_hint(self.directory)
            )
            saved = state["random_states"]
            for name, variable in random_states(self.model).items():
                # A checkpoint written before the names were by layer has them by path.
                value = saved[name] if name in saved else saved[variable.path]
                variable.assign(np.asarray(value, dtype=variable.dtype))
            rows = state["rows"]
        except (OSError, ValueError, KeyError) as error:
            raise FashionCnnError(
                f"{path}: the checkpoint after epoch {completed} is incomplete ({error!r}); delete "
                f"{self.directory} to train from the first epoch"
            ) from None
        self.report.rows = rows
        print(f"resuming after epoch {completed} from the checkpoint in {self.directory}", flush=True)
        # The MLflow run of the resumed training gets the whole history, not only the new epochs.
        record.tag("resumed_after_epoch", completed)
        for row in rows:
            record.metrics({key: value for key, value in row.items() if key != "epoch"}, step=row["epoch"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with signals_deferred():
            super().on_epoch_end(epoch, logs)
            states = random_states(self.model)
            state = {
                "epoch": epoch + 1,
                "rows": self.report.rows,
                "random_states": {name: np.asarray(variable).tolist() for name, variable in states.items()},
                WEIGHTS_DIGEST_KEY: records.sha256(self.directory / KERAS_WEIGHTS_FILE),
                WEIGHTS_SIZE_KEY: (self.directory / KERAS_WEIGHTS_FILE).stat().st_size,
            }
            write_json_atomic(self.state_file(epoch + 1), state)
            # Keep this epoch's and the previous one's, as Keras keeps its files (double_checkpoint).
            self.state_file(epoch - 1).unlink(missing_ok=True)


def discard(directory: Path) -> None:
    """Remove a finished run's checkpoint, and the checkpoints folder when nothing else is in it."""
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()


@contextlib.contextmanager
def training_lock(lock_file: Path) -> Iterator[None]:
    """Hold this checkout's training lock for one run: a second run started meanwhile (another
    terminal, a sweep beside `dvc repro`) stops with one line instead of sharing the checkpoint and
    data/model. The lock is the operating system's (flock): it ends with the process, however it ends."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FashionCnnError(
                f"{lock_file}: another training run in this checkout holds it ({holder}); wait for it "
                f"to finish or stop it, then run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
