"""The four Fashion-MNIST files: where to get them (mirrors, FASHION_CNN_MIRROR) and how each is verified
(SHA-256 of its IDX bytes); the download stage calls `download`."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fashion_cnn import progress
from fashion_cnn.atomic import write_bytes_atomic
from fashion_cnn.errors import DataError
from fashion_cnn.idx import gunzip

log = logging.getLogger(__name__)

MIRROR_ENV_VAR = "FASHION_CNN_MIRROR"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ExpectedFile:
    """One file of the dataset and the checksum of its decompressed IDX bytes."""

    name: str
    sha256: str
    size: int


# Mirrors recompress the .gz files, so only the decompressed bytes have a stable hash.
FILES = (
    ExpectedFile(
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47040016,
    ),
    ExpectedFile(
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60008,
    ),
    ExpectedFile(
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7840016,
    ),
    ExpectedFile(
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10008,
    ),
)


def is_url(source: str) -> bool:
    """True for http(s) sources, false for local directories."""
    return source.startswith(("http://", "https://"))


def fetch(source: str, file_name: str, timeout_seconds: float) -> bytes:
    """Read `file_name` from a local directory or over HTTP, with a bounded timeout per read."""
    if not is_url(source):
        path = Path(source) / file_name
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        return path.read_bytes()
    url = f"{source.rstrip('/')}/{file_name}"
    request = urllib.request.Request(url, headers={"User-Agent": "fashion-cnn"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            size = int(response.headers.get("Content-Length") or 0)
            shown = progress.Progress(url, size, "byte", "MB", rate_per_unit=1e-6) if size else None
            chunks, received = [], 0
            while chunk := response.read(CHUNK_BYTES):
                chunks.append(chunk)
                received += len(chunk)
                if shown is not None:
                    shown.update(min(received, size))
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from None
    except TimeoutError:
        raise DataError(f"{url}: no answer within {timeout_seconds:g} s") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"{url}: unreachable ({reason})") from None


def verify(expected: ExpectedFile, gz_bytes: bytes, source: str) -> None:
    """Check the decompressed size and SHA-256; raise DataError naming source and file."""
    label = f"{source.rstrip('/')}/{expected.name}.gz"
    raw = gunzip(gz_bytes, label)
    if len(raw) != expected.size:
        raise DataError(f"{label}: {len(raw)} bytes after gunzip, expected {expected.size}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected.sha256:
        raise DataError(
            f"{label}: checksum mismatch (sha256 {digest[:16]}..., expected {expected.sha256[:16]}...)"
        )


def source_list(configured: list[str]) -> list[str]:
    """Configured sources, with $FASHION_CNN_MIRROR (comma-separated) tried first."""
    extra = [item.strip() for item in os.environ.get(MIRROR_ENV_VAR, "").split(",") if item.strip()]
    for source in extra:
        if not is_url(source) and not Path(source).is_dir():
            # Not a silent fall-back to the other sources: the user meant this one.
            print(
                f"warning: {MIRROR_ENV_VAR} names {source}, which is not a folder; trying the other sources",
                file=sys.stderr,
                flush=True,
            )
    return extra + [source for source in configured if source not in extra]


def download_file(
    expected: ExpectedFile, sources: list[str], timeout_seconds: float, destination: Path
) -> str:
    """Fetch one file from the first source that gives verified bytes; return that source."""
    failures = []
    for source in sources:
        try:
            gz_bytes = fetch(source, f"{expected.name}.gz", timeout_seconds)
            verify(expected, gz_bytes, source)
        except DataError as error:
            failures.append(str(error))
            log.info("source failed: %s", error)
            continue
        write_bytes_atomic(destination / f"{expected.name}.gz", gz_bytes)
        return source
    tried = "; ".join(failures)
    raise DataError(
        f"could not get {expected.name}.gz from any source (tried: {tried}). Offline on Debian or "
        f"Ubuntu? `apt-get install dataset-fashion-mnist` installs a local mirror in "
        f"/usr/share/datasets/fashion-mnist; or set {MIRROR_ENV_VAR} to a folder or URL."
    )


def download(sources: list[str], timeout_seconds: float, destination: Path) -> dict[str, str]:
    """Fetch and verify all four files into `destination`; return {file name: source used}."""
    used = {}
    for expected in FILES:
        started = time.perf_counter()
        used[expected.name] = download_file(expected, sources, timeout_seconds, destination)
        log.info(
            "%s.gz from %s (%.1f s)",
            expected.name,
            used[expected.name],
            time.perf_counter() - started,
        )
    return used
