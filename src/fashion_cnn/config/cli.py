"""The Hydra entry point every stage shares: params.yaml composed with conf/ presets, one-line errors.

`stage_main(task)` turns `task(config, project_paths)` into the stage's command-line program;
`run_cli(action)` does the same for the plain (non-Hydra) commands.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig

from fashion_cnn import IMPORT_STARTED
from fashion_cnn.config.schema import (
    ParamsSchema,
    allowed_keys,
    read_params_file,
    to_plain_dict,
    unknown_key_message,
    validate,
)
from fashion_cnn.errors import ConfigError, FashionCnnError
from fashion_cnn.utils import environment, paths

STAGE_CONFIG_NAME = "fashion_cnn_stage"


def register_stage_config(root: Path) -> None:
    """Primary config of every stage: params.yaml first, then optional conf/ presets on top.

    Composing from params.yaml (not conf/config.yaml) is what keeps `dvc repro` honest: the
    values DVC tracks are the values the stage runs with. The null group defaults let
    `model=small_cnn` or `experiment=quick` swap in a preset from conf/ for ad-hoc runs. The
    callback groups the MLflow runs of a `-m` sweep under one parent run.
    """
    node = {
        "defaults": ["_self_", "params", {"model": None}, {"experiment": None}],
        "hydra": {
            "searchpath": [f"file://{root}", f"file://{root / 'conf'}"],
            "callbacks": {"mlflow_sweep": {"_target_": "fashion_cnn.tracking.sweep.ParentRunCallback"}},
        },
    }
    ConfigStore.instance().store(name=STAGE_CONFIG_NAME, node=node)


def stage_schema(task: Callable[..., Any]) -> type[ParamsSchema]:
    """The sections a stage reads: the schema its task's `config` parameter is annotated with."""
    schema = typing.get_type_hints(task).get("config")
    if not (isinstance(schema, type) and issubclass(schema, ParamsSchema)):
        raise TypeError(f"{task.__qualname__}: annotate its `config` parameter with a ParamsSchema")
    return schema


def format_override_error(error: Exception, raw: Any, schema: type[ParamsSchema]) -> str:
    """One line for a command-line override Hydra cannot apply: a typo in a key, an unknown preset."""
    from hydra.errors import MissingConfigException

    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    unknown = re.match(r"Could not override '([^']+)'", first_line)
    if unknown and "not in struct" in str(error.__cause__):
        key = unknown.group(1)
        loc = tuple(int(part) if part.isdigit() else part for part in key.split("."))
        allowed = allowed_keys(schema, loc, raw if isinstance(raw, dict) else {})
        return f"invalid params: {unknown_key_message(key, allowed)}"
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        allowed = ", ".join(error.options)
        return f"invalid params: {group}={name}: no such preset in conf/{group} (allowed: {allowed})"
    cause = str(error.__cause__).strip().splitlines()[0] if error.__cause__ else ""
    override = getattr(error, "override", None)
    which = f" {override!r}" if override and override not in first_line else ""
    return f"invalid command-line override{which}: {first_line}" + (f" ({cause})" if cause else "")


# Hydra's switch between printing its errors (over several lines, then exit 1) and raising them.
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"


# The shell's convention for a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_CODE = 130


def _interrupt(signal_number: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `kill` unwinds like Ctrl-C (MLflow run ends KILLED)."""
    raise KeyboardInterrupt


def stage_name(task: Callable[..., Any]) -> str:
    """The stage a task belongs to: the last part of its module's name (also under `python -m`)."""
    spec = task.__globals__.get("__spec__")
    return (spec.name if spec is not None else task.__module__).rsplit(".", 1)[-1]


# The first stage a process runs counts its time from the project's import; later ones (a Hydra
# sweep's jobs, stages called in-process) from their own start.
_PROCESS_START = [IMPORT_STARTED]


def stage_done_line(name: str, started: float, work_started: float) -> str:
    """How long the stage took and how that time split: starting (Python, imports, Hydra's
    composition, validation) and the stage's own work. benchmarks/startup.py reads this line from
    `dvc repro`'s output."""
    now = time.perf_counter()
    return (
        f"stage {name} done in {now - started:.1f} s: {now - work_started:.1f} s its work, "
        f"{work_started - started:.1f} s starting (Python, imports, config)"
    )


def stage_main(task: Callable[[Any, paths.ProjectPaths], Any]) -> Callable[[], None]:
    """Wrap `task(config, project_paths)` as a Hydra app over params.yaml with one-line errors.

    The stage validates only the sections its `config` annotation holds (stage_schema).
    """
    schema = stage_schema(task)

    @functools.wraps(task)
    def entry() -> None:
        try:
            project = paths.project_paths()
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        try:
            raw_params = read_params_file(project.params_file)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        register_stage_config(project.root)

        jobs_started: list[float] = []

        @hydra.main(version_base="1.3", config_path=None, config_name=STAGE_CONFIG_NAME)
        def hydra_app(cfg: DictConfig) -> None:
            job_started = time.perf_counter()
            jobs_started.append(job_started)
            try:
                config = validate(to_plain_dict(cfg), schema)
                work_started = time.perf_counter()
                task(config, project)
                started = _PROCESS_START.pop() if _PROCESS_START else job_started
                print(stage_done_line(stage_name(task), started, work_started), flush=True)
            except FashionCnnError as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(1)
            except KeyboardInterrupt:
                # Outputs are written atomically, so nothing half-written is left for DVC to take.
                print("error: interrupted; no output of this stage was completed", file=sys.stderr)
                sys.exit(INTERRUPTED_EXIT_CODE)

        signal.signal(signal.SIGTERM, _interrupt)
        user_wants_full_error = os.environ.get(HYDRA_FULL_ERROR) == "1"
        try:
            # Hydra raises its composition errors (by default it prints them over several lines and
            # exits); a user who set HYDRA_FULL_ERROR=1 keeps Hydra's full report.
            with environment.variables_set({HYDRA_FULL_ERROR: "1"}):
                hydra_app()
        except HydraException as error:
            if user_wants_full_error:
                raise
            print(f"error: {format_override_error(error, raw_params, schema)}", file=sys.stderr)
            sys.exit(1)
        except OSError as error:
            # Before the stage's job starts, Hydra only creates its run folder and writes .hydra/ there.
            if jobs_started or error.filename is None or user_wants_full_error:
                raise
            print(f"error: {hydra_folder_error(error)}", file=sys.stderr)
            sys.exit(1)

    return entry


def hydra_folder_error(error: OSError) -> str:
    """One line for Hydra's run folder (hydra.run.dir, by default outputs/<date>/<time> in the project;
    hydra.sweep.dir under -m) that cannot be created or written: the stage has not started."""
    folder = Path(os.path.abspath(error.filename))
    setting = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv[1:]) else "hydra.run.dir"
    elsewhere = f"or choose another folder with {setting}=<folder>; the stage did not start"
    # From the root down: a file where a folder of the path must be, e.g. `outputs` a regular file.
    for path in reversed([folder, *folder.parents]):
        if path.exists() and not path.is_dir():
            return (
                f"{folder}: Hydra cannot create its run folder: {path} is a file, not a folder "
                f"({error.strerror}); move it aside, {elsewhere}"
            )
    existing = next(path for path in [folder, *folder.parents] if path.exists())
    return (
        f"{folder}: Hydra cannot create its run folder ({error.strerror}); make {existing} writable, "
        f"{elsewhere}"
    )


def run_cli(action: Callable[[], str]) -> int:
    """Print what `action` returns and give exit code 0; a FashionCnnError is one `error:` line, exit 1."""
    try:
        print(action())
    except FashionCnnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def hydra_overrides() -> list[str]:
    """The command-line overrides of the current Hydra run (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)
