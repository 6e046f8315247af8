"""A .keras file checked before Keras reads it: a complete archive, and no code inside.

Its config.json is read as plain JSON and refused when it names a Lambda layer, a lambda's code or a
class from outside Keras: such an artifact carries (or calls for) code, and loading it must not run
that code. Keras's safe mode refuses lambdas but runs a custom class already registered in the
process; this check refuses both, for every loader (trained_model.load_model).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from fashion_cnn.errors import DataError

# A config.json larger than this is not one the train stage writes; it is refused unread.
MAX_CONFIG_BYTES = 64 * 2**20


def foreign_objects(node: Any) -> list[str]:
    """What a .keras config asks to deserialize beyond stock Keras objects, e.g. ["Lambda layer 'scale'"].

    The compile config is skipped: the model is loaded without compiling, so it is never read.
    """
    found: list[str] = []
    if isinstance(node, list):
        for item in node:
            found += foreign_objects(item)
    elif isinstance(node, dict):
        class_name = node.get("class_name")
        if isinstance(class_name, str):
            config = node.get("config")
            name = node.get("name") or (config.get("name") if isinstance(config, dict) else None)
            named = f" {name!r}" if isinstance(name, str) else ""
            module, registered = node.get("module"), node.get("registered_name")
            from_keras = isinstance(module, str) and (module == "keras" or module.startswith("keras."))
            if class_name == "Lambda":
                return [f"Lambda layer{named}"]  # Its function, inside, is the same finding.
            if class_name == "__lambda__":  # A Python function's code, serialized into the file.
                return ["Python function code"]
            # Keras's own markers (__keras_tensor__, __numpy__, ...) name no class.
            marker = class_name.startswith("__") and class_name.endswith("__")
            if not marker and (not from_keras or registered not in (None, class_name)):
                source = f" from module {module!r}" if isinstance(module, str) else ""
                where = f" in layer{named}" if named else ""
                found.append(f"custom class {registered or class_name!r}{source}{where}")
        for key, value in node.items():
            if key != "compile_config":
                found += foreign_objects(value)
    return found


def check_artifact(model_path: Path, rebuild: str) -> None:
    """Refuse a .keras file whose config asks for a Lambda layer or a custom object, before Keras reads it.

    A file that is not a zip archive is left to trained_model.load_model, which names it as damaged.
    """
    try:
        with zipfile.ZipFile(model_path) as archive:
            if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                limit = MAX_CONFIG_BYTES // 2**20
                raise DataError(f"{model_path}: config.json is over {limit} MiB; {rebuild}")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, RecursionError):
        return
    try:
        found = foreign_objects(config)
    except RecursionError:  # No model Keras writes nests this deep.
        found = ["a config nested too deep to read"]
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise DataError(
            f"{model_path}: refused: the model carries code ({found[0]}{more}) that loading would run; "
            f"only stock Keras layers are loaded; {rebuild}"
        )
