"""The README's and docs' numbers from the report files: `python -m fashion_cnn.tools.report_docs`.

Rewrites what lies between `<!-- generated: NAME -->` (a block of fashion_cnn.reproduction.report_text)
or `<!-- value: FILE KEY FORMAT -->` (one number of a JSON report) and the next `<!-- end -->` in
README.md and docs/*.md; `--check` writes nothing and fails with a diff when a page is stale
(tests/test_report_docs.py runs it). Each profile's model, epochs and data come from its composed config.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize

from fashion_cnn.config import cli, schema
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.model.architecture import count_parameters
from fashion_cnn.reproduction import race_report, race_text, report_text
from fashion_cnn.reproduction.report_text import ProfileFacts, Reports, lookup
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths
from fashion_cnn.utils.atomic import write_text_atomic

# Fashion-MNIST's training file holds 60,000 images; data.validation_size of them validate.
FASHION_MNIST_TRAIN_IMAGES = 60_000
# Each `<!-- generated: NAME -->` block: the function that writes it from the reports.
BLOCKS: dict[str, Callable[[Reports], str]] = {
    "results": report_text.results_table,
    "race": race_text.race_paragraph,
    "race-seed": race_text.race_seed,
    "race-table": race_text.race_table,
    "race-spread": race_text.race_spread,
    "race-findings": race_text.race_findings,
    "race-pace": race_text.race_pace,
    "race-budget": race_text.race_budget,
    "recipe-results": report_text.recipe_results,
    "recipe-sweep": report_text.recipe_sweep,
    "recipe-epoch-seconds": report_text.recipe_epoch_seconds,
}
MARKER = re.compile(r"<!-- (generated|value): ([^>]*?) -->(.*?)<!-- end -->", re.DOTALL)


def pages(root: Path) -> list[Path]:
    """The pages that may hold generated blocks: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def profile_facts(root: Path, experiment: str | None) -> ProfileFacts:
    """Model, size and schedule of params.yaml composed with `experiment=NAME` (or as committed)."""
    cli.register_stage_config(root)
    overrides = [f"experiment={experiment}"] if experiment else []
    with initialize(version_base="1.3", config_path=None):
        composed = compose(cli.STAGE_CONFIG_NAME, overrides=overrides)
    config = ProjectConfig.from_params(schema.to_plain_dict(composed))
    train_images = FASHION_MNIST_TRAIN_IMAGES - config.data.validation_size
    if config.data.max_train_images is not None:
        train_images = min(train_images, config.data.max_train_images)
    return ProfileFacts(
        experiment=experiment,
        model_name=config.model.name,
        parameters=count_parameters(config.model),
        epochs=config.train.epochs,
        batch_size=config.train.batch_size,
        train_images=train_images,
    )


def load_reports(root: Path) -> Reports:
    """The reports under `root`, with the facts of the default, recipe (race winner) and quick profiles."""
    winner = race_report.load_race_config(root).winner
    profiles = {name: profile_facts(root, experiment) for name, experiment in
                (("default", None), ("recipe", winner), ("quick", "quick"))}  # fmt: skip
    return Reports(root, profiles)


def render_marker(kind: str, argument: str, reports: Reports, page: Path) -> str:
    """The text a marker stands for; a FashionCnnError naming the page and marker when it is unknown."""
    if kind == "generated":
        if argument not in BLOCKS:
            raise FashionCnnError(
                f"{page}: unknown generated block {argument!r} (known: {', '.join(BLOCKS)}); fix the marker"
            )
        return BLOCKS[argument](reports)
    parts = argument.split()
    if len(parts) != 3:
        raise FashionCnnError(f"{page}: value marker {argument!r} must be 'FILE KEY FORMAT'; fix the marker")
    report_file, key, format_spec = parts
    value = lookup(reports.json(report_file), key, f"{report_file} (quoted in {page.name})")
    return format(value, format_spec)


def render_page(text: str, reports: Reports, page: Path) -> str:
    """The page with every marker's content rewritten; a block keeps the marker's line layout."""

    def replace(match: re.Match[str]) -> str:
        kind, argument, old = match.group(1), match.group(2).strip(), match.group(3)
        body = render_marker(kind, argument, reports, page)
        if old.startswith("\n"):
            body = f"\n{body}\n"
        return f"<!-- {kind}: {argument} -->{body}<!-- end -->"

    return MARKER.sub(replace, text)


def stale_pages(root: Path) -> dict[Path, tuple[str, str]]:
    """Every page whose markers' content differs from the reports: (current text, generated text)."""
    reports = load_reports(root)
    stale = {}
    for page in pages(root):
        text = page.read_text()
        generated = render_page(text, reports, page)
        if generated != text:
            stale[page] = (text, generated)
    return stale


def page_diff(root: Path, page: Path, current: str, generated: str) -> str:
    """A unified diff from the page as it is to the page as generated."""
    name = str(page.relative_to(root))
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            name,
            f"{name} (generated)",
        )
    )


def run(root: Path, check: bool) -> str:
    """Rewrite the stale pages (or, with check, fail with their diff); the line saying what was done."""
    stale = stale_pages(root)
    if check and stale:
        diffs = "".join(page_diff(root, page, *texts) for page, texts in stale.items())
        names = ", ".join(str(page.relative_to(root)) for page in stale)
        raise FashionCnnError(f"{names}: stale; run `python -m fashion_cnn.tools.report_docs`\n{diffs}")
    if not check:
        for page, (_, generated) in stale.items():
            write_text_atomic(page, generated)
    return f"{len(pages(root))} pages read, {len(stale)} {'stale' if check else 'rewritten'}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.report_docs`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail with a diff when stale")
    arguments = parser.parse_args(argv)
    return cli.run_cli(lambda: run(paths.find_root(), arguments.check))


if __name__ == "__main__":
    sys.exit(main())
