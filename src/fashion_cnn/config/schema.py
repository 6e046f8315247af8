"""How params.yaml is validated: the strict base of every section, a stage's view of the file, and
one-line errors naming the key, the value and what is allowed ("did you mean" for every key).

Each section's schema lives with the code that reads it: config/sections.py (data, tracking),
model/architecture.py (model), training/config.py (train, and the whole file as one run's config).
A stage validates only the sections it reads, so editing a layer type reruns no data stage.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fashion_cnn.errors import ConfigError, DataError
from fashion_cnn.utils import records
from fashion_cnn.utils.atomic import write_text_atomic

PositiveInt = Annotated[int, Field(gt=0)]
# The top-level sections of params.yaml; every stage's schema holds some of them.
SECTIONS = ("seed", "data", "model", "train", "tracking")
PARAMS_REBUILD = "fix it, or restore it with `git checkout params.yaml`"


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, types are not coerced silently."""

    # Each field's docstring is its description: docs/params.md is generated from them.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class ParamsSchema(Strict):
    """What one stage reads of params.yaml: some of SECTIONS, validated by `from_params`."""

    # Lists whose entries pydantic tells apart by their `type` key (model.layers): their classes.
    TAGGED_ENTRIES: ClassVar[dict[str, type[BaseModel]]] = {}

    def check(self) -> None:
        """Checks across sections after the keys are valid (e.g. every layer's shape); raise ConfigError."""

    @classmethod
    def from_params(cls, raw: dict) -> Self:
        """Validate the sections of `raw` (a resolved params dict) this schema holds; one-line ConfigError."""
        return validate(raw, cls)


# ---- turning validation errors into one line ----


def allowed_keys(schema: type[ParamsSchema], loc: tuple, raw: Any) -> list[str]:
    """Walk `loc` down the schema and list the keys allowed where it ends.

    A section the schema does not hold (a stage that reads no model) lists the keys params.yaml has there.
    """
    if loc and loc[0] not in schema.model_fields:
        if not (isinstance(raw, dict) and loc[0] in raw):
            # A misspelt section (trian.epochs=3): the sections are what is allowed.
            return sorted(SECTIONS)
        node = raw
        for part in loc[:-1]:
            node = node[part] if isinstance(node, dict | list) and _has(node, part) else {}
        return sorted(node) if isinstance(node, dict) else []
    current: Any = schema
    node = raw
    for index, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else {}
            entry_type = node.get("type") if isinstance(node, dict) else None
            current = schema.TAGGED_ENTRIES.get(entry_type, current)
            continue
        if _is_entry_tag(schema, loc, index):
            continue
        node = node.get(part, {}) if isinstance(node, dict) else {}
        field = current.model_fields.get(part) if isinstance(current, type) else None
        annotation = field.annotation if field else None
        current = annotation if isinstance(annotation, type) else current
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _has(node: dict | list, part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _dotted(schema: type[ParamsSchema], loc: tuple) -> str:
    """('model', 'layers', 3, 'conv', 'filters') -> 'model.layers.3.filters'."""
    kept = [str(part) for index, part in enumerate(loc) if not _is_entry_tag(schema, loc, index)]
    return ".".join(kept)


def _is_entry_tag(schema: type[ParamsSchema], loc: tuple, index: int) -> bool:
    """Whether loc[index] is the entry type pydantic inserts after a list index (not a key such as
    'activation', which is both a layer type and a key)."""
    return index > 0 and isinstance(loc[index - 1], int) and loc[index] in schema.TAGGED_ENTRIES


def unknown_key_message(key: str, allowed: list[str]) -> str:
    """Name the unknown key, the allowed key it most resembles, and every key allowed there."""
    close = difflib.get_close_matches(key.rpartition(".")[2], allowed, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}' ({guess}allowed here: {', '.join(allowed)})"


def format_validation_error(error: ValidationError, raw: dict, schema: type[ParamsSchema]) -> str:
    """One line naming the key, the bad value and what is allowed."""
    # A misspelt key in params.yaml is both unknown and missing: report the spelling first.
    first = min(error.errors(), key=lambda item: item["type"] != "extra_forbidden")
    key = _dotted(schema, first["loc"]) or "params"
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        message = unknown_key_message(key, allowed_keys(schema, first["loc"], raw))
    elif first["type"] == "union_tag_invalid":
        message = f"{key}.type = {value.get('type')!r}: unknown layer type (allowed: "
        message += ", ".join(schema.TAGGED_ENTRIES) + ")"
    elif first["type"] == "missing":
        message = f"missing key '{key}'"
    elif not first["loc"]:
        # A check across keys (model_validator): its message names the key itself.
        message = first["msg"].removeprefix("Value error, ")
    else:
        message = f"{key} = {value!r}: {first['msg']}"
    more = len(error.errors()) - 1
    return message + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validate(raw: dict, schema: type[ParamsSchema]) -> Any:
    """Validate the sections of `raw` that `schema` holds; an unknown top-level key is refused too.

    Raises ConfigError, so that an impossible model stops a stage before it starts any work.
    """
    unknown = [key for key in raw if key not in SECTIONS]
    if unknown:
        message = unknown_key_message(str(unknown[0]), sorted(SECTIONS))
        raise ConfigError(f"invalid params: {message}")
    own = {key: value for key, value in raw.items() if key in schema.model_fields}
    try:
        config = schema.model_validate(own)
    except ValidationError as error:
        raise ConfigError(f"invalid params: {format_validation_error(error, own, schema)}") from None
    config.check()
    return config


def to_plain_dict(cfg: DictConfig) -> dict:
    """The composed Hydra config as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'model': {'layers': [{'filters': 64}]}} -> {'model.layers.0.filters': 64} (for MLflow params)."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    items: dict[str, Any] = {}
    children = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in children:
        dotted = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            items.update(flatten(value, dotted + "."))
        else:
            items[dotted] = value
    return items


def save_resolved(config: BaseModel, path: Path) -> None:
    """Write the validated config as YAML beside a stage's outputs, atomically."""
    text = OmegaConf.to_yaml(OmegaConf.create(config.model_dump(mode="json")))
    write_text_atomic(path, text)


def read_params_file(path: Path) -> dict[str, Any]:
    """params.yaml as a mapping holding every top-level section, before Hydra composes it.

    A params.yaml without a section is one cut short or mangled (the file always holds them all:
    tests/test_config.py keeps it in step with conf/config.yaml), so it is refused by its name here,
    not as the composed config's missing keys. Problems are ConfigErrors: params are the user's input.
    """
    try:
        params = records.parse_yaml(records.read_text(path, PARAMS_REBUILD), path, PARAMS_REBUILD)
    except DataError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(params, dict):
        raise ConfigError(
            f"{path}: expected a mapping of {', '.join(SECTIONS)}, got {records.kind(params)}; "
            f"{PARAMS_REBUILD}"
        )
    missing = [section for section in SECTIONS if section not in params]
    if missing:
        raise ConfigError(
            f"{path}: incomplete (truncated?): no section {', '.join(repr(name) for name in missing)}; "
            f"{PARAMS_REBUILD}"
        )
    return params
