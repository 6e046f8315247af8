"""Reliability: a full disk, Ctrl-C and SIGTERM while outputs are written, and unsafe code forms.

Bad params and bad data through a stage are test_bad_params.py's table; damaged files are
test_damaged_files.py's; the faults of a running pipeline (signals, resume, locks) are test_faults.py's.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from fashion_cnn import errors
from fashion_cnn.data import splits
from fashion_cnn.utils import atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- a full disk: one line naming the file, no partial file ----

NO_SPACE = "could not write it: No space left on device (free space on that disk, then rerun)"


@pytest.mark.reliability(
    case="disk full while saving prepared arrays",
    sees="one line naming the file, 'No space left on device'; no partial file left",
)
def test_full_disk_saving_prepared_arrays(small_tmpfs, tmp_path: Path) -> None:
    folder = tmp_path / "prepared"
    small_tmpfs(folder, "64k")
    target = folder / "train.npz"
    with pytest.raises(errors.FashionCnnError) as raised:
        # (100, 28, 28, 1) float32: 314 KB on a 64 KiB disk.
        splits.save_npz(target, images=np.zeros((100, 28, 28, 1), np.float32), labels=np.zeros(100, np.uint8))
    assert str(raised.value) == f"{target}: {NO_SPACE}; no partial file was left"
    assert list(folder.iterdir()) == []


@pytest.mark.reliability(
    case="disk full while saving the trained model",
    sees="one line naming the file; the previous model stays, no temp file",
)
def test_full_disk_saving_a_model_keeps_the_previous_one(small_tmpfs, make_config, tmp_path: Path) -> None:
    from fashion_cnn.model.architecture import build_model

    folder = tmp_path / "model"
    small_tmpfs(folder, "64k")
    previous = folder / "model.keras"
    previous.write_bytes(b"the previous model\n")
    # What train.train does with the trained model: 61,130 parameters, about 750 KB.
    model = build_model(make_config("model=small_cnn").model)
    no_space = pytest.raises(errors.FashionCnnError, match=re.escape(f"{previous}: {NO_SPACE}"))
    with no_space, atomic.atomic_path(previous, suffix=".keras") as temp_path:
        model.save(temp_path)
    assert previous.read_bytes() == b"the previous model\n"
    assert [path.name for path in folder.iterdir()] == ["model.keras"]


@pytest.mark.reliability(
    case="Ctrl-C or SIGTERM while a group of outputs is being written",
    sees="the writes finish first, then the stage stops",
)
def test_signals_during_a_group_of_writes_wait_until_it_is_written() -> None:
    written = []
    with pytest.raises(KeyboardInterrupt), atomic.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        written.append("first")
        os.kill(os.getpid(), signal.SIGTERM)
        written.append("second")
    assert written == ["first", "second"]
    # The handlers are back: Ctrl-C interrupts at once again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        written.append("never")
    assert written == ["first", "second"]


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(
            failure,
            marks=pytest.mark.reliability(
                case=f"{what} in the middle of writing files that belong together",
                sees="none of them replaced: the old set stays, no temp file",
            ),
            id=failure,
        )
        for failure, what in (("full disk", "disk full"), ("interrupt", "Ctrl-C"))
    ],
)
def test_files_written_together_are_all_replaced_or_none_is(
    failure: str, small_tmpfs, tmp_path: Path
) -> None:
    folder = tmp_path / "prepared"
    small_tmpfs(folder, "64k")
    first, second = folder / "train.npz", folder / "stats.npz"
    for path in (first, second):
        splits.save_npz(path, values=np.zeros(4, np.uint8))
    before = {path.name: path.read_bytes() for path in (first, second)}
    expected = errors.FashionCnnError if failure == "full disk" else KeyboardInterrupt
    with pytest.raises(expected), atomic.together():
        splits.save_npz(first, values=np.ones(4, np.uint8))  # written, its rename held back
        if failure == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        splits.save_npz(second, values=np.ones((100, 28, 28), np.float32))  # 314 KB: does not fit
    # Nothing replaced, no temp file left: the old pair is still a consistent pair.
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    # Without a failure both are replaced.
    with atomic.together():
        splits.save_npz(first, values=np.ones(4, np.uint8))
        splits.save_npz(second, values=np.ones(4, np.uint8))
    assert sorted(path.name for path in folder.iterdir()) == ["stats.npz", "train.npz"]
    assert all(splits.load_npz(path, ("values",))["values"].sum() == 4 for path in (first, second))


# ---- unsafe forms must not come back ----

SAFETY_SCAN = ("src", "benchmarks", "tests", "Makefile", ".ci", ".github", "dvc.yaml", "pyproject.toml")
# name -> pattern. This file is not scanned: it spells the forms out.
UNSAFE_FORMS = {
    # Unpickling runs code from the file.
    "pickle": r"\b(c?pickle|dill|cloudpickle)\b",
    "np.load with pickle": r"allow_pickle\s*=\s*True",
    # yaml.load without SafeLoader builds arbitrary Python objects.
    "yaml.load": r"yaml\.(load|load_all)\((?![^)]*Loader\s*=\s*yaml\.C?SafeLoader)",
    "unsafe yaml": r"yaml\.(unsafe_load|full_load)|Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b",
    # A shell would interpret values that come from params.
    "shell=True": r"shell\s*=\s*True",
    # Strings run as code, or as a shell command.
    "eval/exec": r"(?<![\w.])(eval|exec)\(",
    "os.system": r"\bos\.(system|popen)\(",
    # Servers bind to 127.0.0.1 only: no other address after a host or bind.
    "all interfaces": r"0\.0\.0\.0|\[::\]",
    "non-loopback bind": r"(?i)\b(host|bind)\W{1,6}(?!127\.0\.0\.1)\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    # A .keras file may hold Python lambdas; safe mode refuses to run them.
    "keras unsafe mode": r"safe_mode\s*=\s*False|enable_unsafe_deserialization",
    "keras load without safe_mode=True": r"keras\.(saving|models)\.load_model\((?![^)]*safe_mode\s*=\s*True)",
    # Model loaders that do not refuse code in the artifact; the project loads models only through
    # trained_model.load_model (Keras safe mode). Tests may read back what they just logged.
    "other model loader": r"mlflow\.(pyfunc|keras|tensorflow)\.load_model|saved_model\.load\(",
}
# Forms that only the project's own code (not its tests) must avoid.
PRODUCT_ONLY_FORMS = ("other model loader",)


def unsafe_lines(paths: list[Path]) -> list[str]:
    """'file:line: form: text' for every unsafe form in `paths` (files or folders of text files)."""
    found = []
    for top in paths:
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for path in files:
            generated = any(part.endswith(".egg-info") or part == "__pycache__" for part in path.parts)
            if (
                generated
                or not path.is_file()
                or path.suffix in (".png", ".pyc")
                or path.name == Path(__file__).name
            ):
                continue
            text = path.read_text(errors="replace")
            # A call may wrap its arguments over lines: join them, so `load_model(\n path, safe_mode=True)`
            # is read whole.
            joined = re.sub(r"\(\s*\n\s*", "(", text)
            in_tests = (
                "tests" in path.relative_to(top if top.is_dir() else top.parent).parts or top.name == "tests"
            )
            for number, line in enumerate(joined.splitlines(), start=1):
                for name, pattern in UNSAFE_FORMS.items():
                    if in_tests and name in PRODUCT_ONLY_FORMS:
                        continue
                    if re.search(pattern, line):
                        found.append(f"{path}:{number}: {name}: {line.strip()}")
    return found


def test_no_unsafe_forms_in_the_source_tree() -> None:
    offending = unsafe_lines([REPO_ROOT / item for item in SAFETY_SCAN if (REPO_ROOT / item).exists()])
    assert offending == [], "\n".join(offending)


def test_the_safety_scan_finds_each_unsafe_form(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    lines = [
        "import " + "pickle",
        "np.load(path, allow_pickle" + "=True)",
        "yaml." + "load(text)",
        "yaml.load(text, Loader=yaml." + "Loader)",
        "subprocess.run(command, shell" + "=True)",
        "server.bind(('0.0.0" + ".0', 80))",
        "keras.saving.load_model(path, safe_mode" + "=False)",
        "keras.models.load_model(" + "path)",
        "ev" + "al(text)",
        "ex" + "ec(code)",
        "os.sys" + "tem(command)",
        "mlflow.pyfunc.load" + "_model(uri)",
        "tf.saved_model.lo" + "ad(path)",
        "server = make_server(host='10.0" + ".0.5', port=80)",
        "socket.bind(('[:" + ":]', 80))",
    ]
    planted.write_text("\n".join(lines) + "\n")
    found = unsafe_lines([planted])
    assert {int(item.split(":")[1]) for item in found} == set(range(1, len(lines) + 1)), found
    safe = tmp_path / "safe.py"
    safe.write_text(
        "yaml.safe_load(text)\nnp.load(path, allow_pickle=False)\n"
        "keras.saving.load_model(\n    path, compile=False, safe_mode=True\n)\nhost = '127.0.0.1'\n"
        "model.evaluate(images)\nos.execve(command[0], command, environment)\n"
    )
    assert unsafe_lines([safe]) == []
