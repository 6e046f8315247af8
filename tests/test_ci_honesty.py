"""Under CI a test whose machine requirement is missing fails; elsewhere it skips.

A requirement is the real dataset, a browser, the right to mount a tmpfs: a CI run without one
would pass without checking. Tiny pytest sessions in subprocesses import conftest afresh, as a CI
job does, so $CI and $FASHION_CNN_TEST_DATASET are read as they are there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import CI_ENV_VAR, DATASET_ENV_VAR, make_synthetic_raw, missing_requirement, under_ci

TESTS_DIR = Path(__file__).resolve().parent

SESSION = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(TESTS_DIR)!r})
    import pytest
    from conftest import DATASET_DIR, missing_requirement, needs_dataset, real_dataset  # noqa: F401

    def test_missing_tool():
        missing_requirement("needs the frobnicator: `sudo apt-get install frobnicator` installs it")

    @needs_dataset
    def test_marked_needs_dataset():
        pass

    def test_reads_the_dataset(real_dataset):
        assert real_dataset == DATASET_DIR

    def test_skip_that_is_no_requirement():
        pytest.skip("this machine has a GPU, so the check does not apply here")
    """
)


def run_session(directory: Path, ci: str | None, dataset: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run SESSION with $CI (None: unset) and the dataset folder; exit code and {test: (outcome, message)}."""
    directory.mkdir()
    (directory / "test_session.py").write_text(SESSION)
    environment = {
        key: value for key, value in os.environ.items() if key not in (CI_ENV_VAR, "PYTEST_ADDOPTS")
    }
    environment[DATASET_ENV_VAR] = str(dataset)
    if ci is not None:
        environment[CI_ENV_VAR] = ci
    report = directory / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    result = subprocess.run(
        [*command, "test_session.py"],
        cwd=directory, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert report.is_file(), result.stdout + result.stderr
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        found = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = found[0].tag if found else "passed"
        outcomes[case.get("name")] = (outcome, found[0].get("message", "") if found else "")
    return result.returncode, outcomes


def test_under_ci_a_missing_dataset_or_tool_fails_naming_it_and_how_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "no-dataset-here"
    empty.mkdir()
    code, outcomes = run_session(tmp_path / "session", "true", empty)
    assert code == 1
    assert outcomes["test_missing_tool"][0] == "failure"
    assert "frobnicator" in outcomes["test_missing_tool"][1]
    assert "sudo apt-get install frobnicator" in outcomes["test_missing_tool"][1]
    for name in ("test_marked_needs_dataset", "test_reads_the_dataset"):
        outcome, message = outcomes[name]
        # Failed in the fixture's setup: pytest reports an error, which fails the run as well.
        assert outcome == "error", (name, outcome)
        assert f"in {empty}" in message and "train-images-idx3-ubyte.gz" in message, message
        assert "apt-get install dataset-fashion-mnist" in message and DATASET_ENV_VAR in message, message
    # A skip that is not about a missing requirement stays a skip.
    assert outcomes["test_skip_that_is_no_requirement"][0] == "skipped"


def test_without_ci_the_same_tests_skip_with_the_same_reason(tmp_path: Path) -> None:
    empty = tmp_path / "no-dataset-here"
    empty.mkdir()
    code, outcomes = run_session(tmp_path / "session", None, empty)
    assert code == 0
    assert {name: outcome for name, (outcome, _) in outcomes.items()} == {
        "test_missing_tool": "skipped",
        "test_marked_needs_dataset": "skipped",
        "test_reads_the_dataset": "skipped",
        "test_skip_that_is_no_requirement": "skipped",
    }
    assert "sudo apt-get install frobnicator" in outcomes["test_missing_tool"][1]
    assert f"in {empty}" in outcomes["test_reads_the_dataset"][1]


def test_the_dataset_folder_comes_from_the_environment_variable(tmp_path: Path) -> None:
    # The four files under the names the download stage writes to data/raw (synthetic here).
    dataset = make_synthetic_raw(tmp_path / "raw").directory
    code, outcomes = run_session(tmp_path / "session", "1", dataset)
    assert outcomes["test_marked_needs_dataset"][0] == "passed"
    assert outcomes["test_reads_the_dataset"][0] == "passed"
    # CI=1 counts as CI too.
    assert outcomes["test_missing_tool"][0] == "failure"
    assert code == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("", False), (None, False)],
)
def test_which_values_of_ci_count(value: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv(CI_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(CI_ENV_VAR, value)
    assert under_ci() is expected
    outcome = pytest.fail.Exception if expected else pytest.skip.Exception
    with pytest.raises(outcome, match="needs the frobnicator"):
        missing_requirement("needs the frobnicator")


@pytest.mark.parametrize("ci", [None, "true"])
def test_small_tmpfs_tries_passwordless_sudo_when_not_root(
    ci: str | None, small_tmpfs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # sudo as a machine without the right to it answers (this one is root and may have no sudo).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "sudo-calls"
    (fake_bin / "sudo").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {calls}\necho "sudo: a password is required" >&2\nexit 1\n'
    )
    (fake_bin / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if ci is None:
        monkeypatch.delenv(CI_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(CI_ENV_VAR, ci)
    folder = tmp_path / "small"
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="sudo: a password is required") as raised:
        small_tmpfs(folder, "64k")
    options = f"size=64k,uid={os.getuid()},gid={os.getgid()}"
    assert calls.read_text().splitlines() == [
        "-n",
        "mount",
        "-t",
        "tmpfs",
        "-o",
        options,
        "tmpfs",
        str(folder),
    ]
    assert "passwordless sudo" in str(raised.value)
