"""dvc.lock is current: every stage's command, code deps and params are what dvc.yaml and the files say.

A fresh clone's `dvc status` then names no stage with a changed command, dep or param; only outputs
missing from the cache may appear. Outputs are not checked (a fresh clone has none of data/), and a
dep that is another stage's output is checked only for being in the lock. Hashes are computed as
DVC 3 computes them (`hash: md5`: the md5 of a file's bytes; a directory's md5 is that of the JSON
list of its files' md5s, `.dir` appended, files .dvcignore names left out), and a fake project
checks that this test and the real `dvc status` agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc.fs import LocalFileSystem
from dvc.ignore import DvcIgnoreFilter
from dvc.utils.serialize import loads_yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS_FILE = "params.yaml"
MISSING = object()


def file_md5(path: Path) -> str:
    """DVC 3's md5 of one file (`hash: md5`): plain md5 of its bytes, no line-ending rewriting."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_yaml(path: Path) -> Any:
    """A YAML file as DVC reads it: YAML 1.2, where `off` and `no` are strings (PyYAML, YAML 1.1: False)."""
    return loads_yaml(path.read_text())


def directory_md5(root: Path, directory: Path) -> str:
    """DVC 3's `.dir` md5: md5 of the sorted JSON list of {md5, relpath}, .dvcignore'd files left out."""
    filesystem = LocalFileSystem()
    ignore = DvcIgnoreFilter(filesystem, os.fspath(root))
    entries = []
    for folder, _, files in ignore.walk(filesystem, os.fspath(directory)):
        for name in files:
            path = Path(folder) / name
            entries.append({"md5": file_md5(path), "relpath": path.relative_to(directory).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def dvc_md5(root: Path, relative_path: str) -> str | None:
    """The md5 DVC would lock for a dep path; None if it does not exist."""
    path = root / relative_path
    if path.is_dir():
        return directory_md5(root, path)
    return file_md5(path) if path.is_file() else None


def declared_params(stage: dict[str, Any]) -> dict[tuple[str, str], None]:
    """(params file, key) for each param a dvc.yaml stage lists, in order."""
    found: dict[tuple[str, str], None] = {}
    for entry in stage.get("params") or []:
        if isinstance(entry, str):
            found[(DEFAULT_PARAMS_FILE, entry)] = None
        else:
            for params_file, keys in entry.items():
                found.update({(params_file, key): None for key in keys or []})
    return found


def lookup(tree: Any, dotted_key: str) -> Any:
    """params[a][b] for 'a.b' (a list index where the part is a number); MISSING if absent."""
    for part in dotted_key.split("."):
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return MISSING
    return tree


def output_paths(stages: dict[str, Any]) -> list[str]:
    """Every path a stage of dvc.yaml writes (outs, metrics, plots)."""
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths += [entry] if isinstance(entry, str) else list(entry)
    return paths


def is_stage_output(path: str, outputs: list[str]) -> bool:
    """Whether `path` is another stage's output or lies inside one (e.g. data/prepared/test.npz)."""
    return any(path == output or path.startswith(output.rstrip("/") + "/") for output in outputs)


def stage_changes(
    root: Path, stage: dict[str, Any], locked: dict[str, Any] | None, outputs: list[str]
) -> dict[str, list[str]]:
    """What differs between one dvc.yaml stage, its dvc.lock entry and the files, by kind; {} if current."""
    if locked is None:
        return {"not in dvc.lock": []}
    changes: dict[str, list[str]] = defaultdict(list)
    if locked.get("cmd") != stage.get("cmd"):
        changes["cmd changed"].append(f"{locked.get('cmd')!r} in the lock, {stage.get('cmd')!r} in dvc.yaml")
    locked_deps = {dep["path"]: dep for dep in locked.get("deps") or []}
    for path in stage.get("deps") or []:
        if path not in locked_deps:
            changes["deps not in the lock"].append(path)
        elif not is_stage_output(path, outputs):
            current = dvc_md5(root, path)
            if current is None:
                changes["deps missing"].append(path)
            elif current != locked_deps[path].get("md5"):
                changes["deps changed"].append(path)
    gone = [path for path in locked_deps if path not in (stage.get("deps") or [])]
    changes["locked deps no longer in dvc.yaml"] += gone
    declared = declared_params(stage)
    locked_params = {
        (params_file, key): value
        for params_file, values in (locked.get("params") or {}).items()
        for key, value in values.items()
    }
    params_trees: dict[str, Any] = {}
    for params_file, key in declared:
        if params_file not in params_trees:
            params_trees[params_file] = read_yaml(root / params_file) or {}
        if (params_file, key) not in locked_params:
            changes["params not in the lock"].append(key)
        elif lookup(params_trees[params_file], key) != locked_params[(params_file, key)]:
            changes["params changed"].append(f"{key} ({params_file})")
    changes["locked params no longer in dvc.yaml"] += [
        key for (_, key) in sorted(locked_params.keys() - declared.keys())
    ]
    return {kind: items for kind, items in changes.items() if items}


def stale_stages(root: Path) -> list[str]:
    """One line per stage whose lock entry is stale: what changed, and the fix."""
    stages = read_yaml(root / "dvc.yaml")["stages"]
    lock_path = root / "dvc.lock"
    lock = read_yaml(lock_path) if lock_path.exists() else {}
    outputs = output_paths(stages)
    lines = []
    for name, stage in stages.items():
        changes = stage_changes(root, stage, (lock.get("stages") or {}).get(name), outputs)
        if changes:
            said = "; ".join(
                f"{kind}: {', '.join(items)}" if items else kind for kind, items in changes.items()
            )
            lines.append(f"{name}: {said} -> run `dvc repro {name}`, then commit dvc.lock and the reports")
    return lines


def test_the_projects_lock_is_current() -> None:
    stale = stale_stages(ROOT)
    assert not stale, "dvc.lock is stale:\n" + "\n".join(stale)


def outputs_by_caching(stages: dict[str, Any]) -> dict[bool, list[str]]:
    """dvc.yaml's outputs by DVC caching: True for cached (the default), False for `cache: false`."""
    found: dict[bool, list[str]] = {True: [], False: []}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                for path, options in ({entry: None} if isinstance(entry, str) else entry).items():
                    found[bool((options or {}).get("cache", True))].append(path)
    return found


def test_every_output_is_committed_or_ignored() -> None:
    """`cache: false` outputs are committed records; cached ones are git-ignored; none is left untracked."""
    outputs = outputs_by_caching(read_yaml(ROOT / "dvc.yaml")["stages"])

    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60)

    uncommitted = [path for path in outputs[False] if not git("ls-files", "--", path).stdout.strip()]
    assert uncommitted == [], (
        f"cache: false outputs not in git: {', '.join(uncommitted)}; run `dvc repro`, then `git add` them"
    )
    not_ignored = [path for path in outputs[True] if git("check-ignore", "--no-index", "-q", path).returncode]
    assert not_ignored == [], (
        f"cached outputs git does not ignore: {', '.join(not_ignored)}; add them to .gitignore"
    )


# A fake project: two stages, code as a file and a folder (with a .dvcignore'd __pycache__), params
# as whole sections and single keys (one the string "off", which DVC writes unquoted into the lock),
# and a stage that reads the other's output.
FAKE_DVC_YAML = {
    "stages": {
        "make": {
            "cmd": "cat src/main.py src/package/part.py > result.txt",
            "deps": ["src/main.py", "src/package"],
            "params": ["size", "train.rate", "train.mode"],
            "outs": ["result.txt"],
        },
        "count": {
            "cmd": "wc -c < result.txt > count.txt",
            "deps": ["result.txt"],
            "params": [{"other.yaml": ["name"]}],
            "outs": ["count.txt"],
        },
    }
}


def dvc(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the real dvc CLI (this venv's) in `project`; fail the test with its output if it fails."""
    command = [sys.executable, "-m", "dvc", *arguments]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(arguments)}: {result.stdout}{result.stderr}"
    return result


def dvc_status(project: Path) -> dict[str, Any]:
    """`dvc status --json` of the project: the ground truth this test must agree with."""
    return json.loads(dvc(project, "status", "--json").stdout or "{}")


@pytest.fixture(scope="module")
def locked_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake project after a real `dvc init` and `dvc repro`: its lock is current."""
    project = tmp_path_factory.mktemp("locked") / "project"
    (project / "src" / "package" / "__pycache__").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('main')\n")
    (project / "src" / "package" / "part.py").write_text("PART = 1\n")
    (project / "src" / "package" / "__pycache__" / "part.cpython-311.pyc").write_bytes(b"\x00compiled")
    (project / ".dvcignore").write_text("__pycache__/\n")
    (project / "params.yaml").write_text('size: 3\ntrain:\n  rate: 0.1\n  epochs: 2\n  mode: "off"\n')
    (project / "other.yaml").write_text("name: fake\n")
    (project / "dvc.yaml").write_text(yaml.safe_dump(FAKE_DVC_YAML, sort_keys=False))
    dvc(project, "init", "--no-scm", "-q")
    dvc(project, "repro", "-q")
    return project


def edit_yaml(path: Path, change: Callable[[Any], Any]) -> None:
    """Load a YAML file, let `change` edit the tree in place, write it back."""
    tree = yaml.safe_load(path.read_text())
    change(tree)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


# Each edit: what it does to the fake project, the stage it makes stale, what the line must name.
EDITS = {
    "a code file edited": (
        lambda project: (project / "src/main.py").write_text("print('edited')\n"),
        "make",
        "deps changed: src/main.py",
    ),
    "a file in a code folder edited": (
        lambda project: (project / "src/package/part.py").write_text("PART = 2\n"),
        "make",
        "deps changed: src/package",
    ),
    "a file added to a code folder": (
        lambda project: (project / "src/package/extra.py").write_text(""),
        "make",
        "deps changed: src/package",
    ),
    "a code dep removed": (
        lambda project: (project / "src/main.py").unlink(),
        "make",
        "deps missing: src/main.py",
    ),
    "a param's value changed": (
        lambda project: edit_yaml(project / "params.yaml", lambda tree: tree["train"].update(rate=0.2)),
        "make",
        "params changed: train.rate (params.yaml)",
    ),
    "a param in another params file changed": (
        lambda project: edit_yaml(project / "other.yaml", lambda tree: tree.update(name="x")),
        "count",
        "params changed: name (other.yaml)",
    ),
    "a param added to dvc.yaml": (
        lambda project: edit_yaml(
            project / "dvc.yaml", lambda tree: tree["stages"]["make"]["params"].append("train.epochs")
        ),
        "make",
        "params not in the lock: train.epochs",
    ),
    "a dep added to dvc.yaml": (
        lambda project: (
            (project / "src/new.py").write_text("")
            or edit_yaml(
                project / "dvc.yaml", lambda tree: tree["stages"]["make"]["deps"].append("src/new.py")
            )
        ),
        "make",
        "deps not in the lock: src/new.py",
    ),
    "a command changed": (
        lambda project: edit_yaml(
            project / "dvc.yaml",
            lambda tree: tree["stages"]["count"].update(cmd="wc -l < result.txt > count.txt"),
        ),
        "count",
        "cmd changed: 'wc -c < result.txt > count.txt' in the lock",
    ),
}


def test_a_fresh_lock_is_current_and_dvc_agrees(locked_project: Path) -> None:
    assert stale_stages(locked_project) == []
    assert dvc_status(locked_project) == {}


def test_bytecode_that_dvcignore_names_changes_nothing(locked_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(locked_project, tmp_path / "project")
    (project / "src/package/__pycache__/part.cpython-311.pyc").write_bytes(b"\x00recompiled")
    assert stale_stages(project) == []
    assert dvc_status(project) == {}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_makes_its_stage_stale_as_dvc_says(edit: str, locked_project: Path, tmp_path: Path) -> None:
    change, stage, named = EDITS[edit]
    project = shutil.copytree(locked_project, tmp_path / "project")
    change(project)
    stale = stale_stages(project)
    assert [line.split(":")[0] for line in stale] == [stage], stale
    assert named in stale[0] and f"run `dvc repro {stage}`, then commit dvc.lock" in stale[0], stale
    assert stage in dvc_status(project), f"dvc status does not call {stage} stale after {edit}"
