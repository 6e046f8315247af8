"""docs/params.md from the params schema: every key of params.yaml with its type, default, allowed
values and meaning. `python -m fashion_cnn.tools.params_doc` writes it; a test keeps it current.

The meanings are the schema's field docstrings (config/, model/layers.py, model/spatial_layers.py,
model/architecture.py), so they survive `dvc exp run`, which rewrites params.yaml from conf/ without
its comments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fashion_cnn.config.cli import run_cli
from fashion_cnn.model.architecture import LAYER_CLASSES
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths
from fashion_cnn.utils.atomic import write_text_atomic

HEADER = """# The params

Every key of `params.yaml`: its type, the default (`conf/` composed, which is the committed
`params.yaml`), what it allows and what it means. Generated from the schema's field descriptions by
`python -m fashion_cnn.tools.params_doc`; `tests/test_params_doc.py` fails when this page and the
schema differ. Back to the [README](../README.md); presets and overrides: [Configuration](configuration.md).
"""
BOUNDS = {annotated_types.Gt: "> {}", annotated_types.Ge: "≥ {}", annotated_types.Lt: "< {}"}
BOUNDS[annotated_types.Le] = "≤ {}"


def type_and_allowed(annotation: Any, field: FieldInfo) -> tuple[str, str]:
    """('int', '> 0'), ('choice', 'a, b'), ('float or null', ...) for a field's annotation."""
    bounds = [
        BOUNDS[type(rule)].format(dataclasses.astuple(rule)[0])
        for rule in field.metadata
        if type(rule) in BOUNDS
    ]
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        nested = FieldInfo.merge_field_infos(field, *[item for item in extra if isinstance(item, FieldInfo)])
        return type_and_allowed(inner, nested)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [item for item in typing.get_args(annotation) if item is not type(None)]
        name, allowed = type_and_allowed(options[0], field)
        return f"{name} or null", allowed
    if typing.get_origin(annotation) is Literal:
        return "choice", ", ".join(str(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if typing.get_origin(item) is typing.Annotated and typing.get_args(item)[0] is not int:
            return "list of layers", ""
        lengths = [
            f"{words} {count} item{'s' * (count != 1)}"
            for words, rule_name in (("at least", "min_length"), ("at most", "max_length"))
            for count in [
                next((getattr(rule, rule_name) for rule in field.metadata if hasattr(rule, rule_name)), None)
            ]
            if count is not None
        ]
        return f"list of {type_and_allowed(item, FieldInfo())[0]}", ", ".join(lengths)
    if annotation is bool:
        return "bool", "true, false"
    return getattr(annotation, "__name__", str(annotation)), " and ".join(bounds)


def cell(text: Any) -> str:
    """A value as a table cell: YAML spelling, one line, pipes escaped."""
    if isinstance(text, bool | type(None)) or not isinstance(text, str):
        text = yaml.safe_dump(text, default_flow_style=True).strip().removesuffix("...").strip()
    return " ".join(str(text).split()).replace("|", "\\|")


def section_rows(model: type[BaseModel], prefix: str, defaults: dict[str, Any]) -> list[str]:
    """One table row per leaf key of `model`, sub-sections' keys included, in schema order."""
    rows = []
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += section_rows(annotation, f"{key}.", defaults.get(name, {}))
            continue
        default = "see [layer types](#layer-types)" if key == "model.layers" else cell(defaults.get(name))
        kind, allowed = type_and_allowed(field.rebuild_annotation(), field)
        rows.append(f"| `{key}` | {kind} | {default} | {cell(allowed)} | {cell(field.description or '')} |")
    return rows


def layer_rows(layer_class: type[BaseModel]) -> list[str]:
    """The keys of one layer type: required ones have no default."""
    rows = []
    for name, field in layer_class.model_fields.items():
        kind, allowed = type_and_allowed(field.rebuild_annotation(), field)
        default = "required" if field.is_required() else cell(field.default)
        rows.append(f"| `{name}` | {kind} | {default} | {cell(allowed)} | {cell(field.description or '')} |")
    return rows


def render(params: dict[str, Any]) -> str:
    """The whole page, from the schema and the default params."""
    table = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines = [HEADER, "## Keys", "", *table, *section_rows(ProjectConfig, "", params), ""]
    lines += ["## Layer types", "", "Each entry of `model.layers` is one of these, chosen by its `type`.", ""]
    for layer_class in dict.fromkeys(LAYER_CLASSES.values()):
        types_ = " / ".join(f"`{name}`" for name, cls in LAYER_CLASSES.items() if cls is layer_class)
        summary = cell((layer_class.__doc__ or "").strip())
        lines += [f"### {types_}", "", *([summary, ""] if summary else []), *table]
        lines += [*layer_rows(layer_class), ""]
    return "\n".join(lines)


def write(project: paths.ProjectPaths, output: Path) -> str:
    """Render docs/params.md from the schema and params.yaml's defaults; one line saying so."""
    write_text_atomic(output, render(yaml.safe_load(project.params_file.read_text())))
    return f"wrote {output}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fashion_cnn.tools.params_doc`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="the page to write (default: docs/params.md)")
    arguments = parser.parse_args(argv)
    project = paths.project_paths()
    return run_cli(lambda: write(project, arguments.output or project.root / "docs" / "params.md"))


if __name__ == "__main__":
    sys.exit(main())
