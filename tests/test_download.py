"""The download stage against a real HTTP server and local mirrors: fallback, error report, atomicity,
the deadline per file, size caps on the body and on what it decompresses to, redirects."""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import re
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest
from servers import gzip_bomb

from fashion_cnn.data import fetch, idx
from fashion_cnn.errors import DataError
from fashion_cnn.stages import prepare
from fashion_cnn.utils import atomic

# Short enough to keep the suite fast, long enough for a loaded machine to answer 127.0.0.1.
TIMEOUT_SECONDS = 0.5
# Never reached by a working mirror on 127.0.0.1; the trickle tests set a short one.
DEADLINE_SECONDS = 30.0
# Past the per-read timeout, so that only the deadline can stop a mirror that trickles.
TRICKLE_DEADLINE_SECONDS = 1.0


reliability = pytest.mark.reliability
LOG_NAME = "fashion_cnn.data.fetch"
LARGEST = "train-images-idx3-ubyte"


@pytest.fixture
def mirror(http_mirror, synthetic_raw, monkeypatch: pytest.MonkeyPatch):
    """The HTTP mirror serving the synthetic files, with fetch.FILES expecting their checksums."""
    http_mirror.files.update(synthetic_raw.gz_bytes)
    monkeypatch.setattr(fetch, "FILES", synthetic_raw.files)
    return http_mirror


def files_in(directory: Path) -> list[str]:
    """Every entry of `directory`, hidden temp files included."""
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def expected_file(synthetic_raw, name: str = LARGEST) -> fetch.ExpectedFile:
    return next(item for item in synthetic_raw.files if item.name == name)


def test_downloads_and_verifies_all_files_over_http(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    used = fetch.download([mirror.url("good")], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS)
    assert used == {item.name: mirror.url("good") for item in synthetic_raw.files}
    assert files_in(destination) == sorted(f"{item.name}.gz" for item in synthetic_raw.files)
    for name, payload in synthetic_raw.gz_bytes.items():
        assert (destination / f"{name}.gz").read_bytes() == payload
    assert (
        idx.load_images(destination / "train-images-idx3-ubyte.gz") == synthetic_raw.images["train"]
    ).all()


def test_recompressed_mirror_is_accepted_by_content_checksum(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    fetch.download([mirror.url("recompressed")], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS)
    saved = (destination / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert saved != synthetic_raw.gz_bytes["t10k-labels-idx1-ubyte"]
    assert (idx.load_labels(destination / "t10k-labels-idx1-ubyte.gz") == synthetic_raw.labels["t10k"]).all()


def falls_through(mode: str, reason: str, case: str, sees: str):
    """A row of the fall-through table: a mirror mode, the reason logged for it, its reliability text."""
    return pytest.param(mode, reason, marks=reliability(case=case, sees=sees), id=mode)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        falls_through(
            "missing", r"HTTP 404", "a mirror answers 404", "next source tried; its 404 listed if all fail"
        ),
        falls_through(
            "corrupt", r"checksum mismatch", "a mirror serves other bytes of the right size",
            "next source tried; 'checksum mismatch' listed if all fail",
        ),
        falls_through(
            "truncated", r"truncated gzip", "a mirror's connection drops halfway",
            "next source tried; 'truncated gzip' listed if all fail",
        ),
        falls_through(
            "slow", r"(no answer within 0\.5 s|timed out)", "a mirror never answers",
            "next source tried after data.timeout_seconds",
        ),
        falls_through(
            "stalled", r"(no answer within 0\.5 s|timed out)", "a mirror stops sending halfway",
            "next source tried after data.timeout_seconds",
        ),
        falls_through(
            "oversize", r"Content-Length 10000\.00 MB is more than the 0\.\d\d MB this file can be; refused",
            "a mirror announces a 10 GB body", "refused before reading; next source tried",
        ),
        falls_through(
            "endless", r"sent more than the 0\.\d\d MB this file can be; stopped",
            "a mirror sends bytes without end and no Content-Length",
            "stopped past the most the file can be; next source tried",
        ),
        falls_through(
            "bomb", r"decompresses to more than [\d,]+ bytes.*gzip bomb",
            "a mirror serves a gzip bomb (48 MiB of zeros in 50 kB)",
            "'decompresses to more than N bytes', memory bounded; next source tried",
        ),
        falls_through(
            "redirect-loop", r"redirects to .*: refused, more than 5 redirects",
            "a mirror redirects to itself forever", "refused after 5 redirects; next source tried",
        ),
    ],
)  # fmt: skip
def test_failing_source_falls_through_to_the_next(
    mirror, synthetic_raw, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    destination = tmp_path / "dest"
    used = fetch.download(
        [mirror.url(mode), mirror.url("good")], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS
    )
    assert set(used.values()) == {mirror.url("good")}
    # The bad source really was tried first, for every file, and failed for the expected reason.
    for item in synthetic_raw.files:
        assert mirror.requests.index(f"/{mode}/{item.name}.gz") < mirror.requests.index(
            f"/good/{item.name}.gz"
        )
        assert (destination / f"{item.name}.gz").read_bytes() == synthetic_raw.gz_bytes[item.name]
        failure = rf"source failed: {re.escape(mirror.url(mode))}[^ ]*/{item.name}\.gz:? {reason}"
        assert re.search(failure, caplog.text), caplog.text


def test_unreachable_source_falls_through_to_the_next(mirror, synthetic_raw, tmp_path: Path) -> None:
    used = fetch.download(
        [mirror.unreachable_url, mirror.url("good")], TIMEOUT_SECONDS, tmp_path / "d", DEADLINE_SECONDS
    )
    assert set(used.values()) == {mirror.url("good")}


@reliability(
    case="every source fails (404, corrupt, truncated, silent, unreachable, missing folder)",
    sees="one line naming each source and why, and how to get the files offline; exit 1",
)
def test_when_every_source_fails_the_error_lists_each_source_and_why(mirror, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    missing_dir = tmp_path / "no-such-mirror"
    sources = [
        mirror.url("missing"),
        mirror.url("corrupt"),
        mirror.url("truncated"),
        mirror.url("slow"),
        mirror.unreachable_url,
        str(missing_dir),
    ]
    started = time.monotonic()
    with pytest.raises(DataError) as raised:
        fetch.download(sources, TIMEOUT_SECONDS, destination, DEADLINE_SECONDS)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    name = "train-images-idx3-ubyte.gz"
    assert message.startswith(f"could not get {name}")
    assert f"{mirror.url('missing')}/{name}: HTTP 404" in message
    assert re.search(rf"{re.escape(mirror.url('corrupt'))}/{name}: checksum mismatch", message)
    assert re.search(rf"{re.escape(mirror.url('truncated'))}/{name}: truncated gzip", message)
    assert re.search(
        rf"{re.escape(mirror.url('slow'))}/{name}: (no answer within 0.5 s|timed out|timeout)", message
    )
    assert re.search(rf"{re.escape(mirror.unreachable_url)}/{name}: unreachable", message)
    assert f"{missing_dir / name} does not exist" in message
    assert "dataset-fashion-mnist" in message and fetch.MIRROR_ENV_VAR in message
    assert "\n" not in message
    # Bounded: the slow mirror holds its answer for 10 s, the timeout cuts it at 0.5 s.
    assert elapsed < 5
    # Atomicity: nothing, not even a temp file, is left where the stage writes.
    assert files_in(destination) == []


@reliability(
    case="a mirror trickles bytes, each read in time for the per-read timeout",
    sees="cut at data.deadline_seconds: '<url>: not complete within N s (got X of Y MB)'; next source",
)
def test_trickling_mirror_is_cut_at_the_deadline_and_the_next_source_is_used(
    mirror, synthetic_raw, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    expected = expected_file(synthetic_raw)
    sources = [mirror.url("trickle"), mirror.url("good")]
    started = time.monotonic()
    used = fetch.download_file(
        expected, sources, TIMEOUT_SECONDS, tmp_path / "dest", TRICKLE_DEADLINE_SECONDS
    )
    elapsed = time.monotonic() - started
    assert used == mirror.url("good")
    size = f"{len(synthetic_raw.gz_bytes[LARGEST]) / 1e6:.2f}"
    assert re.search(
        rf"{re.escape(mirror.url('trickle'))}/{LARGEST}\.gz: not complete within 1 s "
        rf"\(got 0\.0\d of {re.escape(size)} MB\)",
        caplog.text,
    ), caplog.text
    # Each byte came in time for the 0.5 s timeout: the deadline, not a read, stopped the trickle;
    # and it stopped it within one read of the deadline.
    assert TRICKLE_DEADLINE_SECONDS <= elapsed < TRICKLE_DEADLINE_SECONDS + TIMEOUT_SECONDS + 2
    assert (tmp_path / "dest" / f"{LARGEST}.gz").read_bytes() == synthetic_raw.gz_bytes[LARGEST]


def test_redirect_through_the_mirror_is_followed_and_logged(
    mirror, synthetic_raw, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG_NAME)
    used = fetch.download([mirror.url("redirect")], TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS)
    assert set(used.values()) == {mirror.url("redirect")}
    for item in synthetic_raw.files:
        assert (tmp_path / "dest" / f"{item.name}.gz").read_bytes() == synthetic_raw.gz_bytes[item.name]
        hop = f"{mirror.url('redirect')}/{item.name}.gz redirects to {mirror.url('good')}/{item.name}.gz"
        assert f"{hop} (HTTP 302)" in caplog.text
    assert mirror.requests[:2] == [
        f"/redirect/{synthetic_raw.files[0].name}.gz",
        f"/good/{synthetic_raw.files[0].name}.gz",
    ]


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("unsized", id="unsized"),
        pytest.param(
            "garbled-length",
            marks=reliability(
                case="a mirror's Content-Length is not a number",
                sees="read to the end of the connection, then verified as usual",
            ),
            id="garbled-length",
        ),
        pytest.param(
            "lying",
            marks=reliability(
                case="a mirror sends more bytes than its Content-Length says",
                sees="only the announced bytes are read; the file is verified as usual",
            ),
            id="lying",
        ),
    ],
)
def test_answer_without_or_beyond_its_length_gives_the_exact_file(
    mirror, synthetic_raw, tmp_path: Path, mode: str
) -> None:
    used = fetch.download([mirror.url(mode)], TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS)
    assert set(used.values()) == {mirror.url(mode)}
    for name, payload in synthetic_raw.gz_bytes.items():
        assert (tmp_path / "dest" / f"{name}.gz").read_bytes() == payload


@pytest.mark.parametrize(
    ("url", "new_url", "refusal"),
    [
        pytest.param(
            "https://mirror.test/a.gz", "http://mirror.test/a.gz", "refused, https to http",
            marks=reliability(
                case="an https mirror redirects to http",
                sees="'<url> redirects to <http url>: refused, https to http'; next source tried",
            ),
            id="https-to-http",
        ),
        pytest.param(
            "https://mirror.test/a.gz", "HTTP://other.test/a.gz", "refused, https to http",
            marks=reliability(
                case="an https mirror redirects to HTTP (upper case) elsewhere",
                sees="'<url> redirects to <http url>: refused, https to http'; next source tried",
            ),
            id="https-to-upper-case-http",
        ),
        pytest.param(
            "http://mirror.test/a.gz", "ftp://mirror.test/a.gz", "refused, only http and https are followed",
            marks=reliability(
                case="a mirror redirects to ftp",
                sees="'<url> redirects to <ftp url>: refused'; next source tried",
            ),
            id="http-to-ftp",
        ),
        pytest.param("http://mirror.test/a.gz", "https://mirror.test/a.gz", None, id="http-to-https"),
        pytest.param("http://mirror.test/a.gz", "http://other.test/b.gz", None, id="http-to-http"),
        pytest.param("https://mirror.test/a.gz", "https://other.test/b.gz", None, id="https-to-https"),
    ],
)  # fmt: skip
def test_redirect_policy_refuses_https_to_http_and_follows_the_rest(
    url: str, new_url: str, refusal: str | None
) -> None:
    expected = None if refusal is None else f"{url} redirects to {new_url}: {refusal}"
    assert fetch.redirect_refusal(url, new_url) == expected
    # The handler urllib calls for each redirect applies that decision.
    handler = fetch.CheckedRedirects()
    request = urllib.request.Request(url, headers={"User-Agent": "fashion-cnn"})
    if refusal is None:
        followed = handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new_url)
        assert followed.full_url == new_url
    else:
        with pytest.raises(DataError) as raised:
            handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new_url)
        assert str(raised.value) == expected


@reliability(
    case="a mirror redirects to itself forever",
    sees="'<url> redirects to <url>: refused, more than 5 redirects'; next source tried",
)
def test_a_redirect_loop_stops_after_five_redirects(mirror, synthetic_raw, tmp_path: Path) -> None:
    expected = expected_file(synthetic_raw)
    with pytest.raises(DataError) as raised:
        fetch.download_file(
            expected, [mirror.url("redirect-loop")], TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS
        )
    url = f"{mirror.url('redirect-loop')}/{expected.name}.gz"
    assert f"{url} redirects to {url}: refused, more than {fetch.MAX_REDIRECTS} redirects" in str(
        raised.value
    )
    # The first request and the five redirects followed.
    assert mirror.requests == [f"/redirect-loop/{expected.name}.gz"] * (fetch.MAX_REDIRECTS + 1)
    assert files_in(tmp_path / "dest") == []


@reliability(
    case="a gzip bomb from a mirror (48 MiB of zeros in a 50 kB .gz)",
    sees="'<url>: decompresses to more than N bytes'; memory stays near the file's size",
)
def test_gzip_bomb_from_a_mirror_never_fills_memory(mirror, synthetic_raw, tmp_path: Path) -> None:
    expected = expected_file(synthetic_raw)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as raised:
            fetch.download_file(
                expected, [mirror.url("bomb")], TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (
        f"{mirror.url('bomb')}/{expected.name}.gz: decompresses to more than {expected.size:,} bytes"
        in str(raised.value)
    )
    # gzip.decompress would hold all 48 MiB; the cap stops one file's size (94 kB here) past the start.
    assert peak < 4 << 20, f"peak {peak:,} bytes"
    assert files_in(tmp_path / "dest") == []


@reliability(
    case="a raw .gz is a gzip bomb (1 GiB of zeros in 1 MB)",
    sees="'<file>: decompresses to more than N bytes'; stops at the cap, memory bounded",
)
def test_gunzip_stops_a_one_gigabyte_bomb_at_the_cap() -> None:
    bomb = gzip_bomb(1 << 30)
    assert len(bomb) < 2 << 20
    cap = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as raised:
            idx.gunzip(bomb, "bomb.gz", max_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(raised.value).startswith("bomb.gz: decompresses to more than 1,048,576 bytes")
    assert peak < cap + 3 * idx.GUNZIP_CHUNK_BYTES, f"peak {peak:,} bytes"


def test_gunzip_reads_what_gzip_reads() -> None:
    content = bytes(range(256)) * 5000
    single = gzip.compress(content, mtime=0)
    assert idx.gunzip(single, "x.gz") == content
    # Several members, and zero padding after the last, as gzip.decompress allows.
    assert idx.gunzip(single + single + bytes(8), "x.gz", max_bytes=2 * len(content)) == content * 2
    assert idx.gunzip(single, "x.gz", max_bytes=len(content)) == content


@reliability(
    case="data/raw holds a gzip bomb (1 GiB of zeros) in place of the training images",
    sees="prepare: 'train-images-idx3-ubyte.gz: decompresses to more than 67,108,864 bytes'; exit 1",
)
def test_prepare_stops_a_gzip_bomb_in_the_raw_files(synthetic_raw, make_config, tmp_path: Path) -> None:
    bomb = gzip_bomb(1 << 30)
    synthetic_raw.path(LARGEST).write_bytes(bomb)
    prepared_dir = tmp_path / "prepared"
    data_config = make_config("data.validation_size=20").data
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as raised:
            prepare.prepare(synthetic_raw.directory, prepared_dir, data_config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{LARGEST}.gz: decompresses to more than {idx.MAX_IDX_BYTES:,} bytes" in str(raised.value)
    # The cap, the .gz read from disk and a chunk or two, not the 1 GiB gzip.decompress would make.
    assert peak < idx.MAX_IDX_BYTES + len(bomb) + 3 * idx.GUNZIP_CHUNK_BYTES, f"peak {peak:,} bytes"
    assert not prepared_dir.exists()


@reliability(
    case="a local mirror's .gz is larger than the file can be",
    sees="'<path>: X MB is more than the Y MB this file can be; not read'; next source tried",
)
def test_oversized_file_in_a_local_mirror_is_not_read(synthetic_raw, tmp_path: Path) -> None:
    expected = expected_file(synthetic_raw)
    folder = tmp_path / "big-mirror"
    folder.mkdir()
    (folder / f"{expected.name}.gz").write_bytes(bytes(fetch.max_gz_bytes(expected) + 1))
    with pytest.raises(DataError) as raised:
        fetch.download_file(expected, [str(folder)], TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS)
    assert f"{folder / expected.name}.gz: " in str(raised.value)
    assert "MB this file can be; not read" in str(raised.value)
    # The cap leaves room for the file stored without compression, as some mirrors might serve it.
    stored = gzip.compress(idx.encode_idx(synthetic_raw.images["train"]), compresslevel=0)
    assert len(stored) <= fetch.max_gz_bytes(expected)


def test_local_mirror_directory_is_a_source(
    synthetic_raw, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fetch, "FILES", synthetic_raw.files)
    destination = tmp_path / "dest"
    used = fetch.download([str(synthetic_raw.directory)], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS)
    assert set(used.values()) == {str(synthetic_raw.directory)}
    for name, payload in synthetic_raw.gz_bytes.items():
        assert (destination / f"{name}.gz").read_bytes() == payload


@reliability(
    case="a local mirror's file has the right size but the wrong checksum",
    sees="'<path>: checksum mismatch (sha256 ..., expected ...)'; nothing written",
)
def test_checksum_mismatch_in_a_local_mirror_names_the_file_and_writes_nothing(
    synthetic_raw, tmp_path: Path
) -> None:
    # The synthetic file has the expected size but not the expected checksum (no real dataset needed).
    expected = dataclasses.replace(synthetic_raw.files[1], sha256="0" * 64)
    destination = tmp_path / "dest"
    with pytest.raises(DataError) as raised:
        fetch.download_file(
            expected, [str(synthetic_raw.directory)], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS
        )
    label = f"{synthetic_raw.path(expected.name)}: checksum mismatch"
    assert f"(tried: {label} (sha256 " in str(raised.value)
    assert "expected 0000000000000000...)" in str(raised.value)
    assert files_in(destination) == []


def test_mirror_env_var_is_tried_before_configured_sources(
    mirror, synthetic_raw, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    absent = str(tmp_path / "absent")
    local = str(synthetic_raw.directory)
    monkeypatch.setenv(fetch.MIRROR_ENV_VAR, f" {absent} ,{local},")
    configured = [mirror.url("good"), local]
    sources = fetch.source_list(configured)
    assert sources == [absent, local, mirror.url("good")]
    used = fetch.download(sources, TIMEOUT_SECONDS, tmp_path / "dest", DEADLINE_SECONDS)
    assert set(used.values()) == {local}
    assert mirror.requests == []


def test_configured_sources_alone_without_mirror_env_var(mirror) -> None:
    assert fetch.source_list([mirror.url("good"), "/x"]) == [mirror.url("good"), "/x"]


@reliability(
    case="a later download from corrupt or truncated mirrors fails",
    sees="the file already in data/raw is kept as it was; no temp file left",
)
def test_bad_download_never_replaces_a_good_file(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    expected = synthetic_raw.files[1]
    fetch.download_file(expected, [mirror.url("good")], TIMEOUT_SECONDS, destination, DEADLINE_SECONDS)
    good = (destination / f"{expected.name}.gz").read_bytes()
    with pytest.raises(DataError):
        fetch.download_file(
            expected,
            [mirror.url("corrupt"), mirror.url("truncated")],
            TIMEOUT_SECONDS,
            destination,
            DEADLINE_SECONDS,
        )
    assert (destination / f"{expected.name}.gz").read_bytes() == good
    assert files_in(destination) == [f"{expected.name}.gz"]


@reliability(
    case="a download is interrupted while its file is written",
    sees="the old file is kept and no temp file is left",
)
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    target.write_bytes(b"complete")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as temp_path:
        temp_path.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"complete"
    assert files_in(tmp_path) == [target.name]


@reliability(
    case="FASHION_CNN_MIRROR names a folder that does not exist",
    sees="'warning: FASHION_CNN_MIRROR names <path>, which is not a folder; ...'; others tried",
)
def test_a_mirror_that_does_not_exist_is_named_in_a_warning_not_skipped_silently(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-mirror"
    monkeypatch.setenv(fetch.MIRROR_ENV_VAR, f"{missing},http://127.0.0.1:1/mirror")
    assert fetch.source_list(["/configured"]) == [str(missing), "http://127.0.0.1:1/mirror", "/configured"]
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: {fetch.MIRROR_ENV_VAR} names {missing}, which is not a folder; trying the other sources"
    ]
