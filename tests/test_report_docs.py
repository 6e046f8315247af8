"""The README's and docs' numbers are written from the reports (fashion_cnn.tools.report_docs) and in step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fashion_cnn.errors import DataError, FashionCnnError
from fashion_cnn.tools import report_docs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reports() -> report_docs.Reports:
    """The committed reports, with the profiles composed from the committed conf/ and params.yaml."""
    return report_docs.load_reports(ROOT)


def test_the_pages_are_what_the_reports_give() -> None:
    stale = report_docs.stale_pages(ROOT)
    diffs = "".join(report_docs.page_diff(ROOT, page, *texts) for page, texts in stale.items())
    assert not stale, f"stale generated numbers: run `python -m fashion_cnn.tools.report_docs`\n{diffs}"


def test_every_block_is_on_some_page() -> None:
    text = "".join(page.read_text() for page in report_docs.pages(ROOT))
    assert [name for name in report_docs.BLOCKS if f"<!-- generated: {name} -->" not in text] == []


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the generator reads: pages, reports, params.yaml and conf/."""
    for name in ("README.md", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("docs", "reports", "conf"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_a_changed_report_makes_its_pages_stale_until_regenerated(checkout: Path) -> None:
    race_path = checkout / "reports" / "race.json"
    race = json.loads(race_path.read_text())
    race["rows"][0]["test_accuracy"] = 0.9321
    race_path.write_text(json.dumps(race))
    with pytest.raises(FashionCnnError) as raised:
        report_docs.run(checkout, check=True)
    message = str(raised.value)
    assert message.startswith("README.md, docs/race.md: stale; run `python -m fashion_cnn.tools.report_docs`")
    assert "+| `small_vgg_one_cycle` (the winner) | 128 | 5 | 0.9321 |" in message
    pages = len(report_docs.pages(checkout))
    assert report_docs.run(checkout, check=False) == f"{pages} pages read, 2 rewritten"
    assert "tests at **0.9321**" in (checkout / "README.md").read_text()
    assert "| 0.9321 |" in (checkout / "docs" / "race.md").read_text()
    assert report_docs.run(checkout, check=True) == f"{pages} pages read, 0 stale"


def test_a_changed_preset_changes_the_results_table(checkout: Path) -> None:
    quick = checkout / "conf" / "experiment" / "quick.yaml"
    quick.write_text(quick.read_text().replace("epochs: 2", "epochs: 3"))
    text = report_docs.render_page(
        (checkout / "README.md").read_text(), report_docs.load_reports(checkout), checkout
    )
    assert "| 5,000 train / 2,000 test images | 3 |" in text


def test_a_value_marker_quotes_its_report(reports: report_docs.Reports) -> None:
    page = "accuracy <!-- value: reports/metrics.json test.accuracy .3f -->old<!-- end -->."
    quoted = f"{reports.json('reports/metrics.json')['test']['accuracy']:.3f}"  # the committed record's
    assert report_docs.render_page(page, reports, Path("page.md")) == (
        f"accuracy <!-- value: reports/metrics.json test.accuracy .3f -->{quoted}<!-- end -->."
    )


@pytest.mark.reliability(
    case="a docs marker names a block or report key that does not exist",
    sees="one line naming the page, the marker and what is known; nothing written",
)
@pytest.mark.parametrize(
    ("marker", "fragment"),
    [
        ("<!-- generated: results-typo --><!-- end -->", "page.md: unknown generated block 'results-typo'"),
        ("<!-- value: reports/metrics.json test.acuracy .4f --><!-- end -->", "no 'test.acuracy'"),
        ("<!-- value: reports/metrics.json test.accuracy --><!-- end -->", "must be 'FILE KEY FORMAT'"),
    ],
    ids=["unknown-block", "unknown-key", "no-format"],
)
def test_a_bad_marker_is_one_line(marker: str, fragment: str, reports: report_docs.Reports) -> None:
    with pytest.raises(FashionCnnError) as raised:
        report_docs.render_page(marker, reports, Path("page.md"))
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.reliability(
    case="a report the docs quote is missing (e.g. reports/race.json)",
    sees="`error:` naming the file and the command that writes it (make race); exit 1, no page written",
)
def test_a_missing_report_names_the_command_that_writes_it(
    checkout: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (checkout / "reports" / "race.json").unlink()
    before = (checkout / "README.md").read_text()
    monkeypatch.setattr(report_docs.paths, "find_root", lambda: checkout)
    assert report_docs.main([]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "reports/race.json: missing; run `make race`" in error
    assert error.count("\n") == 1
    assert (checkout / "README.md").read_text() == before
    with pytest.raises(DataError):
        report_docs.load_reports(checkout).json("reports/race.json")
