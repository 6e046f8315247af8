"""The model server under load: today's server (a baseline commit) against the working tree's, one model.

`python -m benchmarks.serve_load` (make bench-serve) exports the baseline (`--baseline`, a git ref) with
`git archive`, then starts each server in turn (`python -m fashion_cnn.tools.serve --port 0` with its own
source on PYTHONPATH) on the same model in a scratch project, and measures single-image requests from
1, 4, 16 and 64 concurrent clients for `--seconds` each (requests/s, p50 and p99 latency) and one request
of 1,000 images (images/s). The model is data/model/model.keras with data/prepared/standardization.npz
when the project has them; otherwise the quick preset's small_cnn, built untrained (seed 0), with
per-pixel statistics of 72.9 +- 90 (speed does not depend on what the model learned). The baseline
standardizes the pixels itself: it gets the trained layers alone and standardization.npz; the working
tree's server gets the same layers behind their standardization (a model of raw pixels, `--model`).
Writes reports/serve_bench.json (`--output`) and the table between the markers of docs/serving.md
(`--doc`); `--table-only` regenerates the table from the JSON. Let nothing else run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import serve_table, table
from benchmarks.startup import candidate_identity, export_ref
from fashion_cnn.config.cli import run_cli
from fashion_cnn.errors import FashionCnnError
from fashion_cnn.utils import machine, paths
from fashion_cnn.utils.atomic import write_json_atomic

# main before the server was rebuilt for load: backlog 5, one eager forward pass per request, in turn.
BASELINE_REF = "8e317f2"
CONCURRENCY = (1, 4, 16, 64)
BIG_REQUEST_IMAGES = 1000
# How long a server may take to import TensorFlow, load the model and print its start line.
START_SECONDS = 180


def scratch_project(root: Path, project: Path) -> tuple[str, Path]:
    """A project folder holding what each server reads (dvc.yaml, params.yaml, a model, the statistics);
    what model it is, and the working tree's model file.

    The baseline reads data/model/model.keras, a model of standardized images, and standardizes with
    data/prepared/standardization.npz itself; the working tree's server refuses such a model and is given
    the same layers behind their standardization (candidate/model.keras, passed with --model).
    """
    (project / "data" / "model").mkdir(parents=True)
    (project / "data" / "prepared").mkdir(parents=True)
    (project / "candidate").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(root / name, project / name)
    baseline_model = project / "data" / "model" / "model.keras"
    candidate_model = project / "candidate" / "model.keras"
    model_file, stats_file = (
        root / "data" / "model" / "model.keras",
        root / "data" / "prepared" / "standardization.npz",
    )
    import keras

    if model_file.is_file() and stats_file.is_file():
        from fashion_cnn.training import trained_model

        # The checked loader: no code from the file, and a model that begins with its standardization.
        model = trained_model.load_model(model_file)
        shutil.copy2(model_file, candidate_model)
        # The trained layers after the standardization layer, as the baseline's train stage saved them.
        layers = keras.Sequential(
            [keras.Input(shape=model.input_shape[1:]), *model.layers[1:]], name=model.name
        )
        layers.save(baseline_model)
        shutil.copy2(stats_file, project / "data" / "prepared" / "standardization.npz")
        return f"{model_file} (the project's trained model)", candidate_model
    import yaml

    from fashion_cnn.data.splits import save_npz
    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.model.standardization import with_standardization
    from fashion_cnn.training.config import ProjectConfig

    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["model"] = yaml.safe_load((root / "conf" / "model" / "small_cnn.yaml").read_text())
    keras.utils.set_random_seed(0)
    layers = build_model(ProjectConfig.from_params(raw).model)
    layers.save(baseline_model)
    statistics = {
        "mean": np.full((1, 28, 28), 72.9, np.float32),
        "std": np.full((1, 28, 28), 90.0, np.float32),
    }
    save_npz(project / "data" / "prepared" / "standardization.npz", **statistics)
    with_standardization(layers, statistics["mean"], statistics["std"]).save(candidate_model)
    return "the quick preset's small_cnn, built untrained (no data/model/model.keras here)", candidate_model


def start_server(
    source: Path, project: Path, log: Path, arguments: list[str]
) -> tuple[subprocess.Popen, str]:
    """`python -m fashion_cnn.tools.serve --port 0 [arguments]` from `source`'s src/ in `project`; the
    process and URL."""
    environment = {**os.environ, "PYTHONPATH": str(source / "src"), "FASHION_CNN_ROOT": str(project)}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fashion_cnn.tools.serve", "--port", "0", *arguments],
            cwd=project, env=environment, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        start = lines.get(timeout=START_SECONDS)
    except queue.Empty:
        process.kill()
        raise FashionCnnError(
            f"the server from {source} printed no start line in {START_SECONDS} s; see {log}"
        ) from None
    if not start.startswith("serving "):
        process.kill()
        raise FashionCnnError(f"the server from {source} did not start: {start.strip()}; see {log}")
    return process, start.split(" on ")[-1].strip().removesuffix("/invocations")


def ask(port: int, body: bytes) -> float:
    """Seconds for one POST /invocations on a new connection; FashionCnnError unless answered 200."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise FashionCnnError(f"HTTP {response.status} from 127.0.0.1:{port}")
    return time.perf_counter() - start


def measure_concurrency(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads asking one image at a time for `seconds`: requests/s, p50, p99, failures."""
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        count = 0
        while time.perf_counter() < deadline:
            try:
                latencies.append(ask(port, bodies[(index + count * clients) % len(bodies)]))
            except (OSError, http.client.HTTPException, FashionCnnError) as error:
                failures.append(repr(error))
            count += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    milliseconds = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "requests": len(latencies),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2) if latencies else None,
    }


def measure_server(
    source: Path, arguments: list[str], project: Path, log: Path, options: argparse.Namespace
) -> dict[str, Any]:
    """Start the server from `source` (with `arguments`), measure every concurrency and the big request,
    stop it."""
    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28))
    bodies = [json.dumps({"inputs": image.tolist()}).encode() for image in images]
    big = json.dumps({"inputs": np.resize(images, (BIG_REQUEST_IMAGES, 28, 28)).tolist()}).encode()
    process, url = start_server(source, project, log, arguments)
    port = int(url.rsplit(":", 1)[1])
    try:
        for body in bodies[:20]:  # Warm-up: the first calls trace and allocate.
            ask(port, body)
        levels = {
            str(clients): measure_concurrency(port, bodies, clients, options.seconds)
            for clients in options.concurrency
        }
        ask(port, big)
        big_seconds = sorted(ask(port, big) for _ in range(options.big_repeats))
        median = big_seconds[len(big_seconds) // 2]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return {
        "concurrency": levels,
        "big_request": {"images": BIG_REQUEST_IMAGES, "median_seconds": round(median, 4),
                        "images_per_second": round(BIG_REQUEST_IMAGES / median, 1)},
    }  # fmt: skip


def run_benchmark(options: argparse.Namespace) -> dict[str, Any]:
    """Both servers measured in turn on one model; the report."""
    started = time.perf_counter()
    baseline_source = options.scratch / "baseline"
    commit = export_ref(options.root, options.baseline, baseline_source)
    project = options.scratch / "project"
    model, candidate_model = scratch_project(options.root, project)
    # The baseline has no --model: it serves data/model/model.keras.
    servers = {
        "baseline": (baseline_source, []),
        "candidate": (options.root, ["--model", str(candidate_model)]),
    }
    results = {
        name: measure_server(source, arguments, project, options.scratch / f"{name}.log", options)
        for name, (source, arguments) in servers.items()
    }
    report = {
        "machine": {**machine.hardware(), "cpu_model": machine.cpu_model()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "baseline": {"ref": options.baseline, "commit": commit},
        "candidate": candidate_identity(options.root),
        "model": model,
        "seconds_per_level": options.seconds,
        "results": results,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(options.output, report)
    return report


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default=BASELINE_REF, help=f"git ref of today's server ({BASELINE_REF})"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per concurrency level (20)")
    parser.add_argument(
        "--concurrency", type=lambda text: tuple(int(part) for part in text.split(",")),
        default=CONCURRENCY, help="client counts, comma-separated (1,4,16,64)",
    )  # fmt: skip
    parser.add_argument(
        "--big-repeats", type=int, default=5, help="times the 1,000-image request is sent (5)"
    )
    parser.add_argument("--output", type=Path, help="report file (default: reports/serve_bench.json)")
    parser.add_argument("--doc", type=Path, help="page whose markers to fill (default: docs/serving.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (export, model, logs)")
    parser.add_argument(
        "--table-only", action="store_true", help="only regenerate --doc's table from --output"
    )
    options = parser.parse_args(argv)
    if options.seconds <= 0 or options.big_repeats < 1 or min(options.concurrency) < 1:
        parser.error("--seconds must be positive, --big-repeats and each --concurrency at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.serve_load`."""
    options = parse_arguments(argv)
    options.root = paths.find_root()
    options.output = options.output or paths.project_paths(options.root).reports_dir / "serve_bench.json"
    doc = options.doc or options.root / "docs" / "serving.md"

    def regenerate() -> str:
        report = table.read_report(options.output, "make bench-serve")
        serve_table.write_doc(doc, report)
        return f"{serve_table.format_table(report)}\n\nupdated the table in {doc} from {options.output}"

    if options.table_only:
        return run_cli(regenerate)
    options.scratch = Path(tempfile.mkdtemp(prefix="fashion-cnn-serve-bench-"))

    def measure() -> str:
        report = run_benchmark(options)
        serve_table.write_doc(doc, report)
        return f"{serve_table.format_table(report)}\n\nwrote {options.output} and the table in {doc}"

    try:
        return run_cli(measure)
    finally:
        if options.keep:
            print(f"kept the baseline export, the scratch project and the servers' logs in {options.scratch}")
        else:
            shutil.rmtree(options.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
