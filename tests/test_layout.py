"""The layout shows the architecture: stages and tools over a library, imports one way, small modules.

Read from the source with `ast`, as tests/test_dvc_deps.py reads the stages' import closures.
"""

from __future__ import annotations

from pathlib import Path

from test_dvc_deps import ROOT, imported_names, module_file

PACKAGE = ROOT / "src" / "fashion_cnn"
# A module this long is a sign to split it (CONVENTIONS.md).
MAX_MODULE_LINES = 300


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


def test_imports_run_from_stages_and_tools_down_to_the_library() -> None:
    wrong = []
    for name, targets in import_graph().items():
        for target in targets:
            into_entry_point = target.startswith(("fashion_cnn.stages.", "fashion_cnn.tools."))
            if into_entry_point:
                wrong.append(f"{name} imports {target}")
    assert wrong == [], "no module may import a stage or a tool; move the shared code into the library"


def test_exceptions_live_in_a_leaf_module() -> None:
    assert import_graph()["fashion_cnn.errors"] == set()


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
