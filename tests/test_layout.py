"""The layout shows the architecture: stages and tools over a library in folders by concern, imports
one way between the folders, no import circle, small modules.

Read from the source with `ast`, as tests/test_dvc_deps.py reads the stages' import closures.
"""

from __future__ import annotations

from pathlib import Path

from test_dvc_deps import ROOT, imported_names, module_file

PACKAGE = ROOT / "src" / "fashion_cnn"
# A module this long is a sign to split it.
MAX_MODULE_LINES = 300
# Which library folders each folder may import (besides itself and fashion_cnn.errors, the leaf of
# exceptions). Stages and tools sit above all of them; nothing in the library imports them.
ALLOWED_IMPORTS = {
    "utils": set(),
    "config": {"utils"},
    "model": {"utils", "config"},
    "data": {"utils", "config"},
    "tracking": {"utils", "config"},
    "training": {"utils", "config", "model", "data", "tracking"},
    "evaluation": {"utils", "config", "model", "data", "training"},
    "figures": {"utils", "data", "evaluation"},
    "serving": {"utils", "config", "model", "data", "training"},
    "reproduction": {"utils", "figures"},
}
ENTRY_POINTS = ("stages", "tools")


def module_name(path: Path) -> str:
    """src/fashion_cnn/stages/train.py -> 'fashion_cnn.stages.train' (packages by their folder)."""
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (package __init__ files left out)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        targets = set()
        for imported in imported_names(path, name):
            target = module_file(imported)
            if target is not None and target.name != "__init__.py":
                targets.add(module_name(target))
        graph[name] = targets - {name}
    return graph


def folder(module: str) -> str:
    """'fashion_cnn.data.fetch' -> 'data'; a module at the package's top level -> its own name."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes against ALLOWED_IMPORTS, or into a stage or a tool, as one line each."""
    wrong = []
    for name, targets in sorted(graph.items()):
        source = folder(name)
        for target in sorted(targets):
            destination = folder(target)
            if destination in ENTRY_POINTS:
                wrong.append(f"{name} imports {target}: nothing may import a stage or a tool")
            elif source in ALLOWED_IMPORTS and destination in ALLOWED_IMPORTS and destination != source:
                allowed_here = ALLOWED_IMPORTS[source]
                allowed = ", ".join(sorted(allowed_here)) or "nothing of the library"
                if destination not in allowed_here:
                    wrong.append(f"{name} imports {target}: {source}/ may import only {allowed}")
    return wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as [a, b, ..., a], or [] when there is none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_there_is_no_import_circle() -> None:
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_imports_between_folders_follow_the_layering() -> None:
    assert layering_violations(import_graph()) == []


def test_the_layering_check_names_each_wrong_import() -> None:
    graph = {
        "fashion_cnn.data.splits": {"fashion_cnn.training.loop", "fashion_cnn.utils.atomic"},
        "fashion_cnn.training.loop": {"fashion_cnn.data.splits", "fashion_cnn.errors"},
        "fashion_cnn.serving.classifier": {"fashion_cnn.tools.serve"},
        "fashion_cnn.stages.train": {"fashion_cnn.stages.evaluate", "fashion_cnn.training.loop"},
    }
    assert layering_violations(graph) == [
        "fashion_cnn.data.splits imports fashion_cnn.training.loop: data/ may import only config, utils",
        "fashion_cnn.serving.classifier imports fashion_cnn.tools.serve: "
        "nothing may import a stage or a tool",
        "fashion_cnn.stages.train imports fashion_cnn.stages.evaluate: nothing may import a stage or a tool",
    ]


def test_every_library_folder_has_a_rule_and_a_one_line_docstring() -> None:
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")} - set(ENTRY_POINTS)
    assert folders == set(ALLOWED_IMPORTS)
    for name in folders | set(ENTRY_POINTS):
        text = (PACKAGE / name / "__init__.py").read_text()
        assert text.startswith('"""') and text.count("\n") >= 1, name
    # Only the package marker and the exceptions' leaf module live at the top.
    assert {path.name for path in PACKAGE.glob("*.py")} == {"__init__.py", "errors.py"}


def test_exceptions_live_in_a_leaf_module() -> None:
    assert import_graph()["fashion_cnn.errors"] == set()


def test_tracking_writes_no_stage_output() -> None:
    # tracking/ is left out of every stage's deps in dvc.yaml (it records runs; tests/test_dvc_deps.py):
    # that holds only while it writes no file a stage outputs, i.e. never uses the atomic writers.
    writers = {
        name: sorted(targets & {"fashion_cnn.utils.atomic"})
        for name, targets in import_graph().items()
        if folder(name) == "tracking"
    }
    assert {name: found for name, found in writers.items() if found} == {}


def test_every_stage_of_dvc_yaml_is_a_module_in_stages() -> None:
    from test_dvc_deps import STAGES, stage_modules

    for stage_name, stage in STAGES.items():
        assert stage_modules(stage) == [f"fashion_cnn.stages.{stage_name}"], stage_name
    assert {path.stem for path in (PACKAGE / "stages").glob("[!_]*.py")} == set(STAGES)


def test_no_module_is_too_long_to_read_in_one_go() -> None:
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert {path: lines for path, lines in lengths.items() if lines > MAX_MODULE_LINES} == {}
