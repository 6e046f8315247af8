"""Reading and writing the small text files the stages leave for each other (JSON, YAML, CSV, text).

Each reader names the file, what is wrong with it (missing, empty, not UTF-8 text, cut short,
unparseable) and the command that makes it again (`rebuild`), in one DataError line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fashion_cnn.errors import DataError


def check_file(path: Path, rebuild: str) -> None:
    """A DataError naming `path` when it is missing, not a readable file or empty (0 bytes): the one
    check every reader of a stage's file makes first; `rebuild` says what makes the file again."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {rebuild}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); {rebuild}") from None
    if not path.is_file():
        raise DataError(f"{path}: missing (a folder is there, not a file); {rebuild}")
    if size == 0:
        raise DataError(f"{path}: empty file; {rebuild}")


def read_text(path: Path, rebuild: str) -> str:
    """The file's text; a DataError when it is missing, empty or not UTF-8 (bytes flipped on disk)."""
    check_file(path, rebuild)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); {rebuild}") from None
    if not content.strip():
        raise DataError(f"{path}: empty file; {rebuild}")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: corrupt: not UTF-8 text (byte 0x{content[error.start]:02x} at offset {error.start}); "
            f"{rebuild}"
        ) from None


def parse_json(text: str, path: Path, rebuild: str) -> Any:
    """The JSON document in `text`; a DataError telling a cut-short file from a garbled one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        # What the project writes is an object or a list: a complete one ends with its bracket.
        if error.pos >= len(text.rstrip()) or not text.rstrip().endswith(("}", "]")):
            raise DataError(f"{path}: truncated JSON (it ends before the document does); {rebuild}") from None
        raise DataError(
            f"{path}: corrupt: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            f"{rebuild}"
        ) from None


def parse_yaml(text: str, path: Path, rebuild: str) -> Any:
    """The YAML document in `text` (safe loader); a DataError with the line number where it breaks."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        # A file cut short mostly ends in the middle of a line, where the YAML breaks.
        if mark and mark.line >= text.count("\n") and not text.endswith("\n"):
            problem += "; its last line has no end: truncated?"
        raise DataError(f"{path}{where}: not valid YAML ({problem}); {rebuild}") from None


def read_json(path: Path, rebuild: str) -> Any:
    """read_text, then parse_json."""
    return parse_json(read_text(path, rebuild), path, rebuild)


def read_json_object(path: Path, keys: dict[str, type | tuple[type, ...]], rebuild: str) -> dict[str, Any]:
    """A JSON object holding at least `keys`, each of its type (bool is not an int here)."""
    record = read_json(path, rebuild)
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: expected a JSON object with {', '.join(keys)}, got {kind(record)}; {rebuild}"
        )
    for key, expected in keys.items():
        if key not in record:
            raise DataError(
                f"{path}: incomplete: no {key!r} (has {', '.join(record) or 'nothing'}); {rebuild}"
            )
        value = record[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _types(expected)):
            names = " or ".join(item.__name__ for item in _types(expected))
            raise DataError(f"{path}: {key!r} must be {names}, got {kind(value)} {value!r:.60}; {rebuild}")
    return record


def _types(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def kind(value: Any) -> str:
    """A value's type as a reader would say it: 'a list', 'an int', 'nothing'."""
    if value is None:
        return "nothing"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as CSV text with a header line (`columns`, else the first row's keys), each line
    ending in a newline: the one CSV writer of the project's records."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
