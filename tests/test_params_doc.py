"""docs/params.md: generated from the schema's field descriptions, and in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from fashion_cnn.model.architecture import LAYER_CLASSES
from fashion_cnn.tools import params_doc
from fashion_cnn.training.config import ProjectConfig

ROOT = Path(__file__).resolve().parents[1]


def schema_classes(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every section class below it."""
    found = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += schema_classes(field.annotation)
    return found


def test_the_page_is_what_the_schema_and_params_yaml_give() -> None:
    expected = params_doc.render(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert (ROOT / "docs" / "params.md").read_text() == expected, (
        "docs/params.md is out of date: run `python -m fashion_cnn.tools.params_doc`"
    )


@pytest.mark.parametrize(
    "schema_class", [*schema_classes(ProjectConfig), *dict.fromkeys(LAYER_CLASSES.values())], ids=str
)
def test_every_key_has_a_meaning(schema_class: type[BaseModel]) -> None:
    assert [name for name, field in schema_class.model_fields.items() if not field.description] == []


def test_every_key_of_params_yaml_and_every_layer_type_is_on_the_page() -> None:
    page = (ROOT / "docs" / "params.md").read_text()

    def keys(tree: dict, prefix: str = "") -> list[str]:
        found = []
        for name, value in tree.items():
            if isinstance(value, dict):
                found += keys(value, f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}")
        return found

    for key in keys(yaml.safe_load((ROOT / "params.yaml").read_text())):
        assert f"| `{key}` |" in page, key
    for layer_type in LAYER_CLASSES:
        assert f"`{layer_type}`" in page, layer_type


def test_a_changed_description_makes_the_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    before = params_doc.render(params)
    monkeypatch.setattr(ProjectConfig.model_fields["seed"], "description", "Something else.")
    assert params_doc.render(params) != before
