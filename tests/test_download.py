"""The download stage against a real HTTP server and local mirrors: fallback, error report, atomicity."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest

from fashion_cnn import atomic, fetch, idx
from fashion_cnn.errors import DataError

# Short enough to keep the suite fast, long enough for a loaded machine to answer 127.0.0.1.
TIMEOUT_SECONDS = 0.5


@pytest.fixture
def mirror(http_mirror, synthetic_raw, monkeypatch: pytest.MonkeyPatch):
    """The HTTP mirror serving the synthetic files, with fetch.FILES expecting their checksums."""
    http_mirror.files.update(synthetic_raw.gz_bytes)
    monkeypatch.setattr(fetch, "FILES", synthetic_raw.files)
    return http_mirror


def files_in(directory: Path) -> list[str]:
    """Every entry of `directory`, hidden temp files included."""
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def test_downloads_and_verifies_all_files_over_http(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    used = fetch.download([mirror.url("good")], TIMEOUT_SECONDS, destination)
    assert used == {item.name: mirror.url("good") for item in synthetic_raw.files}
    assert files_in(destination) == sorted(f"{item.name}.gz" for item in synthetic_raw.files)
    for name, payload in synthetic_raw.gz_bytes.items():
        assert (destination / f"{name}.gz").read_bytes() == payload
    assert (
        idx.load_images(destination / "train-images-idx3-ubyte.gz") == synthetic_raw.images["train"]
    ).all()


def test_recompressed_mirror_is_accepted_by_content_checksum(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    fetch.download([mirror.url("recompressed")], TIMEOUT_SECONDS, destination)
    saved = (destination / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert saved != synthetic_raw.gz_bytes["t10k-labels-idx1-ubyte"]
    assert (idx.load_labels(destination / "t10k-labels-idx1-ubyte.gz") == synthetic_raw.labels["t10k"]).all()


@pytest.mark.parametrize("mode", ["missing", "corrupt", "truncated", "slow", "stalled"])
def test_failing_source_falls_through_to_the_next(mirror, synthetic_raw, tmp_path: Path, mode: str) -> None:
    destination = tmp_path / "dest"
    used = fetch.download([mirror.url(mode), mirror.url("good")], TIMEOUT_SECONDS, destination)
    assert set(used.values()) == {mirror.url("good")}
    # The bad source really was tried first, for every file.
    for item in synthetic_raw.files:
        assert mirror.requests.index(f"/{mode}/{item.name}.gz") < mirror.requests.index(
            f"/good/{item.name}.gz"
        )
        assert (destination / f"{item.name}.gz").read_bytes() == synthetic_raw.gz_bytes[item.name]


def test_unreachable_source_falls_through_to_the_next(mirror, synthetic_raw, tmp_path: Path) -> None:
    used = fetch.download([mirror.unreachable_url, mirror.url("good")], TIMEOUT_SECONDS, tmp_path / "d")
    assert set(used.values()) == {mirror.url("good")}


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
        fetch.download(sources, TIMEOUT_SECONDS, destination)
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


def test_local_mirror_directory_is_a_source(
    synthetic_raw, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fetch, "FILES", synthetic_raw.files)
    destination = tmp_path / "dest"
    used = fetch.download([str(synthetic_raw.directory)], TIMEOUT_SECONDS, destination)
    assert set(used.values()) == {str(synthetic_raw.directory)}
    for name, payload in synthetic_raw.gz_bytes.items():
        assert (destination / f"{name}.gz").read_bytes() == payload


def test_checksum_mismatch_in_a_local_mirror_names_the_file_and_writes_nothing(
    synthetic_raw, tmp_path: Path
) -> None:
    # The synthetic file has the expected size but not the expected checksum (no real dataset needed).
    expected = dataclasses.replace(synthetic_raw.files[1], sha256="0" * 64)
    destination = tmp_path / "dest"
    with pytest.raises(DataError) as raised:
        fetch.download_file(expected, [str(synthetic_raw.directory)], TIMEOUT_SECONDS, destination)
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
    used = fetch.download(sources, TIMEOUT_SECONDS, tmp_path / "dest")
    assert set(used.values()) == {local}
    assert mirror.requests == []


def test_configured_sources_alone_without_mirror_env_var(mirror) -> None:
    assert fetch.source_list([mirror.url("good"), "/x"]) == [mirror.url("good"), "/x"]


def test_bad_download_never_replaces_a_good_file(mirror, synthetic_raw, tmp_path: Path) -> None:
    destination = tmp_path / "dest"
    expected = synthetic_raw.files[1]
    fetch.download_file(expected, [mirror.url("good")], TIMEOUT_SECONDS, destination)
    good = (destination / f"{expected.name}.gz").read_bytes()
    with pytest.raises(DataError):
        fetch.download_file(
            expected, [mirror.url("corrupt"), mirror.url("truncated")], TIMEOUT_SECONDS, destination
        )
    assert (destination / f"{expected.name}.gz").read_bytes() == good
    assert files_in(destination) == [f"{expected.name}.gz"]


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    target.write_bytes(b"complete")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as temp_path:
        temp_path.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"complete"
    assert files_in(tmp_path) == [target.name]


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
