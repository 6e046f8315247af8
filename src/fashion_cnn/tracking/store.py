"""The local MLflow store (mlflow.db), checked before a stage opens it, and its online backup.

MLflow meets a damaged SQLite file with a SQLAlchemy traceback, silently starts a new store inside an
empty one, and offers `mlflow db upgrade` even for a schema a newer MLflow wrote. check_store reads
the file's bytes and, with sqlite3, its header, schema revision and locks, and stops with one line
naming the file, what is wrong and what to do. It writes nothing to the store: the file stays
byte-identical, its mtime too. MLflow is not imported: its schema head is read from its migrations.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import sqlite3
from pathlib import Path

from fashion_cnn.errors import DataError

SQLITE_PREFIX = "sqlite:///"
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
# How long a writer may hold the store's write lock before it counts as stuck: MLflow's own wait
# (PRAGMA busy_timeout = 20000 in mlflow.store.db.utils), after which its calls fail anyway.
LOCK_WAIT_SECONDS = 20.0
BACKUP_DOC = "docs/tracking.md#backing-up-the-run-history"


def local_store(uri: str) -> Path | None:
    """The SQLite file of a `sqlite:///` tracking URI; None for a server or another database."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


def fresh_start(path: Path) -> str:
    """What to do with a store that cannot be used: restore a backup, or move it aside."""
    return (
        f"restore a backup ({BACKUP_DOC}), or move it aside (mv {path} {path}.damaged) "
        f"and run again to start a new, empty store"
    )


def check_store(uri: str, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """Raise DataError (one line) when the local store of `uri` is damaged, of another MLflow
    version's schema or locked by a stuck writer; a missing file is fine (MLflow makes it)."""
    path = local_store(uri)
    if path is None:
        return
    if not path.exists():
        return
    check_bytes(path)
    check_database(path, lock_wait_seconds)


def check_bytes(path: Path) -> None:
    """Empty, not SQLite, or shorter than its header says: read from the bytes alone."""
    if not path.is_file():
        raise DataError(f"MLflow store {path} is not a file; {fresh_start(path)}")
    size = path.stat().st_size
    if size == 0:
        raise DataError(
            f"MLflow store {path} is an empty file (0 bytes), with no run history in it; {fresh_start(path)}"
        )
    with open(path, "rb") as file:
        header = file.read(HEADER_BYTES)
    if not header.startswith(SQLITE_MAGIC[: len(header)]) or not header:
        raise DataError(
            f"MLflow store {path} is not an SQLite database (it starts with {header[:16]!r}): "
            f"it is damaged, or another file took its name; {fresh_start(path)}"
        )
    if problem := truncation(header, size):
        raise DataError(f"MLflow store {path} is truncated: {problem}; {fresh_start(path)}")


def truncation(header: bytes, size: int) -> str:
    """How a file is shorter than its SQLite header says ('' when it is not); sqlite.org/fileformat2."""
    if len(header) < HEADER_BYTES:
        return f"{size} bytes, less than SQLite's {HEADER_BYTES}-byte header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return ""  # not a page size: a damaged header, which SQLite itself reports
    # The page count at offset 28 is valid when the version-valid-for number matches the change counter.
    pages = int.from_bytes(header[28:32], "big")
    if header[92:96] == header[24:28] and pages and size < pages * page_size:
        return (
            f"{size:,} bytes where its header says {pages} pages of {page_size} ({pages * page_size:,} bytes)"
        )
    if size % page_size:
        return f"{size:,} bytes, not a whole number of its {page_size}-byte pages"
    return ""


def check_database(path: Path, lock_wait_seconds: float) -> None:
    """With the store's write lock taken and released (so no writer is stuck and nothing changes
    while it is read): SQLite's structure check and the MLflow schema revision."""
    database = sqlite3.connect(path, timeout=lock_wait_seconds, isolation_level=None)
    try:
        try:
            database.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise DataError(locked_message(path, lock_wait_seconds)) from None
            raise
        # The bytes again, now that no other process can be writing them.
        with open(path, "rb") as file:
            if problem := truncation(file.read(HEADER_BYTES), path.stat().st_size):
                raise DataError(f"MLflow store {path} is truncated: {problem}; {fresh_start(path)}")
        (verdict,) = database.execute("PRAGMA quick_check(1)").fetchone()
        if verdict != "ok":
            raise DataError(f"MLflow store {path} is corrupt (SQLite: {verdict}); {fresh_start(path)}")
        tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = schema_revision(database, tables)
    except sqlite3.DatabaseError as error:
        raise DataError(f"MLflow store {path} is corrupt (SQLite: {error}); {fresh_start(path)}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            database.execute("ROLLBACK")
        database.close()
    check_schema(path, tables, revision)


def schema_revision(database: sqlite3.Connection, tables: set[str]) -> str | None:
    """The alembic revision MLflow recorded in the store; None where it recorded none (yet)."""
    if "alembic_version" not in tables:
        return None
    row = database.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def check_schema(path: Path, tables: set[str], revision: str | None) -> None:
    """The store's schema revision must be the installed MLflow's head (what MLflow's _verify_schema asks)."""
    if revision is None:
        # No tables, or MLflow's first tables without their revision yet: MLflow creates the rest.
        if tables and "experiments" not in tables:
            shown = ", ".join(sorted(tables)[:5])
            raise DataError(
                f"MLflow store {path} is an SQLite database but not an MLflow store (its tables: {shown}); "
                f"{fresh_start(path)}"
            )
        return
    revisions = migration_revisions()
    head = schema_head(revisions)
    if revision == head:
        return
    version = importlib.metadata.version("mlflow")
    if revision in revisions:
        raise DataError(
            f"MLflow store {path} has an older MLflow's schema (revision {revision}; MLflow {version} needs "
            f"{head}): back it up (make backup-runs), then run `mlflow db upgrade {SQLITE_PREFIX}{path}`"
        )
    raise DataError(
        f"MLflow store {path} has schema revision {revision}, which MLflow {version} does not know "
        f"(a newer MLflow wrote it): use that MLflow (the project pins {version} in requirements.lock), "
        f"or {fresh_start(path)}"
    )


def migration_revisions() -> dict[str, str | None]:
    """Each revision of the installed MLflow's schema migrations and the one it follows."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MLflow is not installed: run `make setup`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    revisions: dict[str, str | None] = {}
    for script in folder.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision = re.search(r'^revision = "(\w+)"', text, re.MULTILINE)
        follows = re.search(r'^down_revision = (?:"(\w+)"|None)', text, re.MULTILINE)
        if revision and follows:
            revisions[revision.group(1)] = follows.group(1)
    return revisions


def schema_head(revisions: dict[str, str | None]) -> str:
    """The one revision no other follows: the schema the installed MLflow expects."""
    heads = set(revisions) - set(revisions.values())
    if len(heads) != 1:
        raise RuntimeError(f"MLflow's migrations have {len(heads)} heads ({sorted(heads)}), expected 1")
    return heads.pop()


def locked_message(path: Path, lock_wait_seconds: float) -> str:
    """The line for a store whose write lock another process held for the whole wait."""
    holders = lock_holders(path)
    if holders:
        who = ", ".join(f"process {pid} ({command})" for pid, command in holders)
        stop = f"kill {' '.join(str(pid) for pid, _ in holders)}"
    else:
        who, stop = "another process", "stop the process that has it open (fuser -v " + str(path) + ")"
    return (
        f"MLflow store {path} is locked: {who} held its write lock for over {lock_wait_seconds:g} s, "
        f"a stuck writer; let it finish or stop it ({stop}), then run again"
    )


def lock_holders(path: Path) -> list[tuple[int, str]]:
    """The processes holding POSIX locks on the file (Linux's /proc/locks), with their command lines."""
    try:
        status = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 4242 08:01:1234 1073741824 1073741825"
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[5] == device:
            pid = int(fields[4])
            if pid != os.getpid() and pid not in pids:
                pids.append(pid)
    return [(pid, command_line(pid)) for pid in pids]


def command_line(pid: int) -> str:
    """A process's command line, shortened, or '?' where it cannot be read."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    # Whitespace collapsed: an argument may hold newlines (python -c), and the message is one line.
    return " ".join(b" ".join(words).decode(errors="replace").split())[:80] or "?"


def backup_store(database: Path, destination: Path) -> None:
    """Copy a live store with SQLite's online backup: a consistent snapshot even while runs log to it."""
    check_store(f"{SQLITE_PREFIX}{database}")
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
