"""docs/reliability.md: generated from the tests' reliability markers, and in step with them."""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path

import reliability_doc


def test_the_page_is_what_the_tests_give() -> None:
    page, problems = reliability_doc.page_from_tests()
    assert problems == [], "\n".join(problems)
    current = reliability_doc.PAGE.read_text() if reliability_doc.PAGE.is_file() else ""
    diff = "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            page.splitlines(keepends=True),
            "docs/reliability.md",
            "from the tests",
            n=0,
        )
    )
    assert current == page, (
        f"docs/reliability.md is out of date: run `python -m tests.reliability_doc`\n{diff}"
    )


SAMPLE = """
import pytest

@pytest.mark.reliability(case="a file cut short", sees="one line naming it; exit 1")
def test_marked():
    pass

@pytest.mark.parametrize("value", [
    pytest.param(1, marks=pytest.mark.reliability(case="row one | with a pipe", sees="sees one"), id="one"),
    pytest.param(2, id="unmarked-row"),
    pytest.param(3, marks=pytest.mark.reliability(case="row three", sees="sees three"), id="three"),
])
def test_table(value):
    pass

def test_unmarked():
    pass

@pytest.mark.reliability(case="no sees")
def test_half_marked():
    pass
"""


def collect_sample(directory: Path) -> reliability_doc.Collector:
    """The generator's collection over one small test file in `directory` (with the marker registered)."""
    (directory / "pytest.ini").write_text("[pytest]\nmarkers =\n    reliability(case, sees): a case\n")
    (directory / "test_sample_cases.py").write_text(textwrap.dedent(SAMPLE))
    return reliability_doc.collect(
        [
            str(directory),
            "--rootdir",
            str(directory),
            "-c",
            str(directory / "pytest.ini"),
            "--import-mode=importlib",
        ]
    )


def test_every_marked_test_and_table_row_is_picked_up_and_nothing_else(tmp_path: Path) -> None:
    collector = collect_sample(tmp_path)
    found = [(row.case, row.sees, row.test) for row in collector.rows]
    assert found == [
        ("a file cut short", "one line naming it; exit 1", "test_sample_cases.py::test_marked"),
        ("row one | with a pipe", "sees one", "test_sample_cases.py::test_table[one]"),
        ("row three", "sees three", "test_sample_cases.py::test_table[three]"),
        ("no sees", "", "test_sample_cases.py::test_half_marked"),
    ]
    # A marker without its `sees` is reported, naming the test, so the page is not written.
    assert collector.problems == [
        "test_sample_cases.py::test_half_marked: write the marker as reliability(case=..., sees=...)",
        "test_sample_cases.py::test_half_marked: sees must be one line of 1 to 100 characters, got ''",
    ]
    page = reliability_doc.render(collector.rows[:3])
    assert "**3 cases tested**, in 1 groups." in page
    assert "- [Sample cases](#sample-cases) (3)" in page and "\n## Sample cases\n" in page
    assert r"| row one \| with a pipe | sees one | `test_sample_cases.py::test_table[one]` |" in page


def test_a_test_file_that_does_not_import_is_a_problem_not_a_shorter_page(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text("import no_such_module_anywhere\n")
    collector = collect_sample(tmp_path)
    assert len(collector.problems) == 3, collector.problems
    assert collector.problems[-1].startswith("pytest could not collect the tests (exit 2)")


def test_groups_come_from_the_test_file() -> None:
    assert reliability_doc.group_of("tests/test_download.py::test_x[row]") == "Downloads"
    assert reliability_doc.group_of("tests/test_tracking_faults.py::test_y") == "Tracking server"
    assert reliability_doc.group_of("tests/test_new_kind_of_fault.py::test_z") == "New kind of fault"
    assert (
        reliability_doc.group_of(
            "tests/test_bad_params.py::test_bad_input_stops_the_stage_with_one_error_line[x]"
        )
        == "Bad params and data through a stage"
    )
    assert reliability_doc.group_of("tests/test_reliability.py::test_full_disk_saving_prepared_arrays") == (
        "Full disks and interruptions"
    )
