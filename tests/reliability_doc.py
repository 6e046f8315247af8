"""docs/reliability.md from the tests: every bad input and fault a test checks, what the user sees,
and the test. `python -m tests.reliability_doc` writes it; tests/test_reliability_doc.py keeps it current.

The rows are the test items that carry the `reliability(case, sees)` marker (on a parametrized table,
one marker per pytest.param), found by pytest's own collection: nothing runs. The group of a row
comes from its test file (GROUPS), so a new test file needs no change here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fashion_cnn.utils import quiet
from fashion_cnn.utils.atomic import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = REPO_ROOT / "docs" / "reliability.md"
MARKER = "reliability"
# Longest case or sees text: a table cell a person reads at a glance.
MAX_TEXT = 100

# Test file -> the group its rows are listed under, in this order; files not named here get a group
# from their name ("test_foo_bar.py" -> "Foo bar").
GROUPS = {
    "test_download.py": "Downloads",
    "test_prepare.py": "Raw and prepared data",
    "test_bad_params.py": "Bad params and data through a stage",
    "test_damaged_files.py": "Damaged files",
    "test_memory.py": "Models that do not fit",
    "test_predict.py": "Predicting your own images",
    "test_serve.py": "Serving",
    "test_serve_load.py": "Serving under load",
    "test_tracking_faults.py": "Tracking server",
    "test_mlflow_server.py": "Tracking server",
    "test_reliability.py": "Full disks and interruptions",
    "test_faults.py": "Full disks and interruptions",
    "test_project_files.py": "Run folders, DVC's files and ports",
    "test_tracking_store.py": "The run history (mlflow.db)",
    "test_backup_runs.py": "The run history (mlflow.db)",
    "test_verdict.py": "Runs that learned nothing",
    "test_race.py": "Race config",
    "test_report_docs.py": "Docs generated from reports",
}

HEADER = """# Reliability

Every bad input and fault the tests check, what you see when it happens, and the test that checks
it: the project's promise. Generated from the tests' `reliability(case, sees)` markers by
`python -m tests.reliability_doc`; `tests/test_reliability_doc.py` fails when this page and the
tests differ. Tests marked slow run in `make test-slow`, the others in `make test`. What the load
tests measured (the burst's connections, answers and p99) is in
[Serving: what the tests check](serving.md#what-the-tests-check). Back to the [README](../README.md).
"""


@dataclass(frozen=True)
class Row:
    """One tested case: the input or fault, what the user sees, and the test item's node id."""

    group: str
    case: str
    sees: str
    test: str


class Collector:
    """A pytest plugin that keeps every collected item's reliability marker (and what is wrong with one)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.problems: list[str] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            marker = next(item.iter_markers(MARKER), None)
            if marker is None:
                continue
            case, sees = marker.kwargs.get("case", ""), marker.kwargs.get("sees", "")
            if marker.args or set(marker.kwargs) != {"case", "sees"}:
                self.problems.append(f"{item.nodeid}: write the marker as {MARKER}(case=..., sees=...)")
            for name, text in (("case", case), ("sees", sees)):
                if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT or "\n" in text:
                    self.problems.append(
                        f"{item.nodeid}: {name} must be one line of 1 to {MAX_TEXT} characters, got {text!r}"
                    )
            self.rows.append(Row(group_of(item.nodeid), str(case), str(sees), item.nodeid))


def group_of(node_id: str) -> str:
    """The group of a test item, from its file (GROUPS)."""
    file_name = Path(node_id.split("::")[0]).name
    if group := GROUPS.get(file_name):
        return group
    return file_name.removeprefix("test_").removesuffix(".py").replace("_", " ").capitalize()


def collect(arguments: list[str]) -> Collector:
    """Collect (never run) the tests that `arguments` name with pytest; the marked items found.

    A collection error (a test file that does not import) is a problem too: its cases would be
    missing from the page.
    """
    collector = Collector()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main(
            ["--collect-only", "-q", "-p", "no:cacheprovider", "--capture=no", *arguments],
            plugins=[collector],
        )
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        tail = " | ".join(output.getvalue().strip().splitlines()[-5:])
        collector.problems.append(f"pytest could not collect the tests (exit {int(code)}): {tail}")
    return collector


def cell(text: str) -> str:
    """Text for a Markdown table cell: one line, with its pipes escaped."""
    return re.sub(r"\s+", " ", text).replace("|", r"\|").strip()


def render(rows: list[Row]) -> str:
    """The page: header, the count, then one table per group (GROUPS order, then the others A-Z)."""
    rank = {group: index for index, group in enumerate(dict.fromkeys(GROUPS.values()))}
    groups = sorted({row.group for row in rows}, key=lambda group: (rank.get(group, len(rank)), group))
    lines = [HEADER, f"**{len(rows)} cases tested**, in {len(groups)} groups.", ""]
    lines += [
        f"- [{group}](#{anchor(group)}) ({sum(row.group == group for row in rows)})" for group in groups
    ]
    for group in groups:
        lines += ["", f"## {group}", "", "| Case | What you see | Test |", "|---|---|---|"]
        lines += [
            f"| {cell(row.case)} | {cell(row.sees)} | `{cell(row.test)}` |"
            for row in rows
            if row.group == group
        ]
    return "\n".join(lines) + "\n"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def page_from_tests() -> tuple[str, list[str]]:
    """The page the repository's tests give, and what is wrong with their markers (none: [])."""
    collector = collect([str(REPO_ROOT / "tests"), "--rootdir", str(REPO_ROOT)])
    return render(collector.rows), collector.problems


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tests.reliability_doc`: write docs/reliability.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=PAGE, help="the page to write (default: docs/reliability.md)"
    )
    arguments = parser.parse_args(argv)
    # Collecting imports TensorFlow: keep its C++ start-up chatter out of the output, as the stages do.
    quiet.install()
    page, problems = page_from_tests()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"error: {arguments.output} not written: fix the markers above", file=sys.stderr)
        return 1
    write_text_atomic(arguments.output, page)
    count = page.split("**", 2)[1]
    print(f"wrote {arguments.output}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
