"""dvc.yaml lists every module each stage imports, so an edit to any of them reruns that stage.

The import closure is read from the source with `ast` (nothing is imported, so this is fast and
sees imports inside functions too); a stage's code deps must cover it.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Where each project package lives. Imports of any other top-level name (keras, mlflow, ...) are
# not code deps; `benchmarks` is followed only if a stage reaches it.
PACKAGE_ROOTS = {"fashion_cnn": ROOT / "src", "benchmarks": ROOT}
# Deps under these directories are code: each must exist, or the stage depends on nothing.
CODE_DIRS = ("src/", "benchmarks/")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """The file that runs on `import module` (a/b.py or a/b/__init__.py); None if not a project module."""
    top, *rest = module.split(".")
    if top not in PACKAGE_ROOTS:
        return None
    base = PACKAGE_ROOTS[top].joinpath(top, *rest)
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `path` (module `module`) imports, at top level or inside functions.

    `from a import b` yields both `a` and `a.b`, since `b` may be a submodule or a name defined in
    a/__init__.py; names that are not modules resolve to no file and drop out of the closure.
    """
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # `from ..x import y` in a.b.c is `from a.x import y`: level 1 is the module's own package.
            prefix = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(prefix + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


# Code that records runs in MLflow and writes no stage output (tests/test_layout.py holds it to that):
# not a dep of any stage, so editing a tag or the keep-going policy reruns nothing.
NOT_OUTPUT_CODE = ("fashion_cnn.tracking",)


def import_closure(module: str, skip: tuple[str, ...] = ()) -> set[Path]:
    """The project files that run on `import module`: it, its packages' __init__.py, what they import;
    modules under a package of `skip` (and what only they import) are left out."""
    files: set[Path] = set()
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in skip or name.startswith(tuple(prefix + "." for prefix in skip)):
                break
            path = module_file(name)
            if path is not None and path not in files:
                files.add(path)
                pending.extend(imported_names(path, name))
    return files


def stage_modules(stage: dict[str, Any]) -> list[str]:
    """The modules a stage's cmd runs with `python -m`."""
    commands = [stage["cmd"]] if isinstance(stage["cmd"], str) else stage["cmd"]
    return re.findall(r"python -m ([\w.]+)", " ".join(commands))


def is_listed(file: str, deps: list[str]) -> bool:
    """Whether `file` is one of `deps` or inside a directory listed there."""
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_code_deps(stages: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per stage, the files of its import closure that its deps do not list; complete stages are left out."""
    missing = {}
    for name, stage in stages.items():
        closure = set().union(*(import_closure(module, NOT_OUTPUT_CODE) for module in stage_modules(stage)))
        files = sorted(path.relative_to(ROOT).as_posix() for path in closure)
        unlisted = [file for file in files if not is_listed(file, stage.get("deps", []))]
        if unlisted:
            missing[name] = unlisted
    return missing


def expected_code_deps(stage: dict[str, Any]) -> list[str]:
    """The code deps a stage should list: the stage module first, then its import closure, a folder
    named once when the closure holds every module in it (exact either way: no file it does not run)."""
    closure = set().union(*(import_closure(module, NOT_OUTPUT_CODE) for module in stage_modules(stage)))
    files = {path.relative_to(ROOT).as_posix() for path in closure}
    folders = {path.parent for path in closure if path.parent != ROOT / "src" / "fashion_cnn"}
    deps = set(files)
    for folder in folders:
        inside = {path.relative_to(ROOT).as_posix() for path in folder.glob("*.py")}
        if inside <= files and folder.name not in ("stages", "tools"):
            deps = (deps - inside) | {folder.relative_to(ROOT).as_posix()}
    entry = [file for file in files if file.endswith(stage_modules(stage)[0].replace(".", "/") + ".py")]
    return entry + sorted(deps - set(entry))


def write_code_deps(dvc_yaml: Path) -> None:
    """Rewrite each stage's code deps in dvc.yaml (`make deps`), keeping its data deps and the rest."""
    text = dvc_yaml.read_text()
    for name, stage in yaml.safe_load(text)["stages"].items():
        block = re.search(rf"\n  {name}:\n(.*?)(?=\n  \w+:\n|\Z)", text, re.S).group(1)
        deps = re.search(r"    deps:\n((?:      - .*\n)+)", block).group(0)
        data = [dep for dep in stage.get("deps", []) if not dep.startswith(CODE_DIRS)]
        listed = "".join(f"      - {dep}\n" for dep in data + expected_code_deps(stage))
        text = text.replace(block, block.replace(deps, "    deps:\n" + listed))
    dvc_yaml.write_text(text)


def code_deps(stage: dict[str, Any]) -> list[str]:
    """The deps of a stage that are project files or directories."""
    return [dep for dep in stage.get("deps", []) if dep.startswith(CODE_DIRS)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_imported_module(name: str) -> None:
    modules = stage_modules(STAGES[name])
    assert modules, f"stage {name!r}: cmd {STAGES[name]['cmd']!r} runs no `python -m` module"
    for module in modules:
        assert module_file(module) is not None, f"stage {name!r} runs {module}, which has no source file"
    missing = missing_code_deps({name: STAGES[name]}).get(name, [])
    assert not missing, f"stage {name!r} imports files its deps in dvc.yaml do not list: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_only_the_code_it_runs(name: str) -> None:
    # An extra dep reruns the stage for an edit that cannot change its outputs (a layer type and the
    # download, say); `make deps` rewrites the lists.
    assert code_deps(STAGES[name]) == expected_code_deps(STAGES[name]), "run `make deps`"


def test_data_stages_run_no_model_training_or_tracking_code() -> None:
    for name in ("download", "prepare"):
        deps = code_deps(STAGES[name])
        wrong = [
            dep
            for dep in deps
            if dep.startswith(
                ("src/fashion_cnn/model", "src/fashion_cnn/training", "src/fashion_cnn/tracking")
            )
        ]
        assert wrong == [], name


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist(name: str) -> None:
    stale = [dep for dep in code_deps(STAGES[name]) if not (ROOT / dep).exists()]
    assert not stale, f"stage {name!r} lists deps in dvc.yaml that do not exist: {stale}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_checker_reports_a_dropped_dep(name: str) -> None:
    # Relative to what the real dvc.yaml already misses, so drift elsewhere fails only the test above.
    already_missing = missing_code_deps(STAGES)
    stages = copy.deepcopy(STAGES)
    dropped = [dep for dep in code_deps(stages[name]) if dep.endswith(".py")][-1]
    stages[name]["deps"].remove(dropped)
    expected = {**already_missing, name: sorted(already_missing.get(name, []) + [dropped])}
    assert missing_code_deps(stages) == expected


def test_a_listed_directory_covers_its_files() -> None:
    train = copy.deepcopy(STAGES["train"])
    train["deps"] = [dep for dep in train["deps"] if not dep.startswith("src/")] + ["src/fashion_cnn"]
    assert missing_code_deps({"train": train}) == {}
    # A prefix of the name is not the directory.
    train["deps"][-1] = "src/fashion"
    assert "src/fashion_cnn/stages/train.py" in missing_code_deps({"train": train})["train"]


def test_closure_follows_subpackages_relative_and_function_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = {
        "pkg/__init__.py": "CONSTANT = 1\n",
        "pkg/stages/__init__.py": "",
        "pkg/stages/train.py": "from .. import CONSTANT, util\nfrom ..lib.model import build\n",
        "pkg/util.py": "import keras\n\ndef run():\n    import pkg.lazy as lazy\n",
        "pkg/lib/model.py": "from . import helpers\n",  # A namespace package: no __init__.py.
        "pkg/lib/helpers.py": "",
        "pkg/lazy.py": "from pkg import util\n",  # A cycle back to util.
        "pkg/unused.py": "",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setitem(PACKAGE_ROOTS, "pkg", tmp_path)
    closure = {path.relative_to(tmp_path).as_posix() for path in import_closure("pkg.stages.train")}
    assert closure == set(sources) - {"pkg/unused.py"}


if __name__ == "__main__":
    write_code_deps(ROOT / "dvc.yaml")
