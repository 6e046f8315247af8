"""The four Fashion-MNIST files: where to get them (mirrors, FASHION_CNN_MIRROR) and how each is verified
(SHA-256 of its IDX bytes); the download stage calls `download`."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

from fashion_cnn.data.idx import gunzip
from fashion_cnn.errors import DataError
from fashion_cnn.utils import progress
from fashion_cnn.utils.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

MIRROR_ENV_VAR = "FASHION_CNN_MIRROR"
CHUNK_BYTES = 1 << 20
# Redirects followed for one file; a mirror that moved needs one or two.
MAX_REDIRECTS = 5
# A .gz holds its content plus a header, a trailer and 5 bytes per stored block of up to 64 KiB;
# this allowance covers them (and a file name in the header) with room to spare.
GZIP_FRAMING_BYTES = 64 << 10


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


def max_gz_bytes(expected: ExpectedFile) -> int:
    """The most a .gz of `expected` can be: its content stored uncompressed plus gzip's framing."""
    return expected.size + expected.size // 100 + GZIP_FRAMING_BYTES


def content_length(headers: Message) -> int:
    """The body size a response announces; 0 when it announces none or garbles it (as http.client
    then reads to the end of the connection)."""
    try:
        return max(int(headers.get("Content-Length") or 0), 0)
    except ValueError:
        return 0


def megabytes(count: int) -> str:
    """47040016 -> '47.04'."""
    return f"{count / 1e6:.2f}"


def redirect_refusal(url: str, new_url: str) -> str | None:
    """Why a redirect from `url` to `new_url` is not followed, or None when it is."""
    scheme = urllib.parse.urlsplit(new_url).scheme.lower()
    if scheme not in ("http", "https"):
        return f"{url} redirects to {new_url}: refused, only http and https are followed"
    if scheme == "http" and urllib.parse.urlsplit(url).scheme.lower() == "https":
        return f"{url} redirects to {new_url}: refused, https to http"
    return None


class CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, never from https to http, and logs each one."""

    # urllib's own limits (10, and 4 visits of one URL) raise a multi-line error; ours come first.
    max_redirections = max_repeats = MAX_REDIRECTS + 1

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        """The request urllib sends next, or DataError when this redirect is refused."""
        refusal = redirect_refusal(req.full_url, newurl)
        if refusal is None and sum(getattr(req, "redirect_dict", {}).values()) >= MAX_REDIRECTS:
            refusal = f"{req.full_url} redirects to {newurl}: refused, more than {MAX_REDIRECTS} redirects"
        if refusal is not None:
            fp.close()
            raise DataError(refusal)
        log.info("%s redirects to %s (HTTP %d)", req.full_url, newurl, code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(
    source: str, file_name: str, timeout_seconds: float, deadline_seconds: float, max_bytes: int
) -> bytes:
    """Read `file_name` (at most `max_bytes`) from a local directory or over HTTP: a timeout per
    read, and `deadline_seconds` for the whole file (checked after each read of the body, so it may
    run over by one read's timeout)."""
    if not is_url(source):
        path = Path(source) / file_name
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        if (size := path.stat().st_size) > max_bytes:
            raise DataError(
                f"{path}: {megabytes(size)} MB is more than the {megabytes(max_bytes)} MB this file "
                f"can be; not read"
            )
        return path.read_bytes()
    url = f"{source.rstrip('/')}/{file_name}"
    request = urllib.request.Request(url, headers={"User-Agent": "fashion-cnn"})
    deadline = time.monotonic() + deadline_seconds
    opener = urllib.request.build_opener(CheckedRedirects)
    try:
        with opener.open(request, timeout=timeout_seconds) as response:
            size = content_length(response.headers)
            if size > max_bytes:
                raise DataError(
                    f"{url}: Content-Length {megabytes(size)} MB is more than the {megabytes(max_bytes)} "
                    f"MB this file can be; refused"
                )
            shown = progress.Progress(url, size, "byte", "MB", rate_per_unit=1e-6) if size else None
            chunks, received = [], 0
            # read1 returns what has arrived, so a mirror that trickles bytes meets the deadline too.
            while chunk := response.read1(CHUNK_BYTES):
                chunks.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    raise DataError(
                        f"{url}: sent more than the {megabytes(max_bytes)} MB this file can be; stopped"
                    )
                if time.monotonic() > deadline:
                    got = f"{megabytes(received)} of {megabytes(size)}" if size else megabytes(received)
                    raise DataError(f"{url}: not complete within {deadline_seconds:g} s (got {got} MB)")
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
    # Stopped one byte past the expected size: a gzip bomb never fills memory.
    raw = gunzip(gz_bytes, label, max_bytes=expected.size)
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
    expected: ExpectedFile,
    sources: list[str],
    timeout_seconds: float,
    destination: Path,
    deadline_seconds: float,
) -> str:
    """Fetch one file from the first source that gives verified bytes within `deadline_seconds`;
    return that source."""
    failures = []
    for source in sources:
        try:
            gz_bytes = fetch(
                source, f"{expected.name}.gz", timeout_seconds, deadline_seconds, max_gz_bytes(expected)
            )
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


def download(
    sources: list[str], timeout_seconds: float, destination: Path, deadline_seconds: float
) -> dict[str, str]:
    """Fetch and verify all four files into `destination`, each within `deadline_seconds` from one
    source; return {file name: source used}."""
    used = {}
    for expected in FILES:
        started = time.perf_counter()
        used[expected.name] = download_file(expected, sources, timeout_seconds, destination, deadline_seconds)
        log.info(
            "%s.gz from %s (%.1f s)",
            expected.name,
            used[expected.name],
            time.perf_counter() - started,
        )
    return used
