"""`make serve` (python -m fashion_cnn.tools.serve): a real server on 127.0.0.1 asked over HTTP.

The model is small_cnn from conf/model, freshly built (untrained: the protocol, not the accuracy, is
tested here), put behind per-pixel statistics like prepare's as the train stage does, and saved as a real
.keras file that takes raw grey levels.
"""

from __future__ import annotations

import functools
import http.client
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_predict import small_cnn_config, write_png

from fashion_cnn import CLASS_NAMES
from fashion_cnn.errors import DataError
from fashion_cnn.model import artifact
from fashion_cnn.model.standardization import takes_raw_pixels
from fashion_cnn.serving import classifier, http_server, protocol
from fashion_cnn.tools import predict, serve
from fashion_cnn.training import trained_model

reliability = pytest.mark.reliability
# How long the command may take to import TensorFlow, load the model and print its start line.
START_SECONDS = 180


@dataclass(frozen=True)
class ModelFiles:
    """A saved model that carries its standardization, in a folder of its own, and the per-pixel
    statistics inside it (each (1, 28, 28) float32), for tests that standardize by hand."""

    model_file: Path
    mean: np.ndarray
    std: np.ndarray

    def install(self, project: Path) -> None:
        """Copy the model where a project keeps it: data/model/model.keras (all predict and serve read)."""
        (project / "data" / "model").mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.model_file, project / "data" / "model" / "model.keras")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    """small_cnn built from the real config (seeded, untrained) behind per-pixel statistics like
    prepare's, saved as the train stage saves it."""
    import keras

    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.model.standardization import with_standardization

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("model-files")
    model_file = root / "model.keras"
    generator = np.random.default_rng(0)
    mean = generator.uniform(20, 120, (1, 28, 28)).astype(np.float32)
    std = generator.uniform(40, 100, (1, 28, 28)).astype(np.float32)
    with_standardization(build_model(small_cnn_config().model), mean, std).save(model_file)
    return ModelFiles(model_file, mean, std)


@pytest.fixture(scope="module")
def server(model_files: ModelFiles) -> Iterator[http_server.ModelServer]:
    """The real ModelServer on a free port of 127.0.0.1, serving from a thread."""
    loaded = classifier.load_classifier(model_files.model_file)
    model_server = http_server.ModelServer(loaded, 0)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model_server
    finally:
        model_server.shutdown()
        model_server.server_close()


def post(url: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a body (a dict goes as JSON) and return the status and the JSON answer, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def scores(top: list[dict[str, Any]]) -> dict[int, float]:
    """A prediction list as {class index: probability}."""
    return {item["index"]: item["probability"] for item in top}


def raw_images(count: int, seed: int = 1) -> np.ndarray:
    """(count, 28, 28) integer grey levels 0..255."""
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28))


# ---- the protocol ----


def test_health_answers_ok(server: http_server.ModelServer) -> None:
    for path in ("/health", "/ping"):
        with urllib.request.urlopen(f"{server.url}{path}", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}


def test_one_image_or_a_batch_gets_predicts_top_classes(server: http_server.ModelServer) -> None:
    status, answer = post(f"{server.url}/invocations", {"inputs": raw_images(1)[0].tolist()})
    assert status == 200 and len(answer["predictions"]) == 1
    top = answer["predictions"][0]
    assert len(top) == 3 and [item["class"] for item in top] == [CLASS_NAMES[item["index"]] for item in top]
    probabilities = [item["probability"] for item in top]
    assert probabilities == sorted(probabilities, reverse=True)

    images = raw_images(3, seed=2)
    status, answer = post(f"{server.url}/invocations", {"inputs": images.tolist(), "top": 10})
    assert status == 200 and len(answer["predictions"]) == 3
    for top in answer["predictions"]:
        assert sorted(item["index"] for item in top) == list(range(10))
        assert sum(item["probability"] for item in top) == pytest.approx(1.0, abs=1e-5)
    # Each image is answered on its own: the batch's first equals that image sent alone.
    _, alone = post(f"{server.url}/invocations", {"inputs": images[0].tolist(), "top": 10})
    assert scores(alone["predictions"][0]) == pytest.approx(scores(answer["predictions"][0]), abs=1e-6)


def trained_layers(model: Any, images: np.ndarray) -> np.ndarray:
    """The first image's outputs of `model`'s layers after its standardization, on (count, 28, 28) images."""
    import keras

    assert takes_raw_pixels(model)
    activations = images[..., np.newaxis]
    for layer in model.layers[1:]:
        activations = layer(activations, training=False)
    return keras.ops.convert_to_numpy(activations)[0]


def test_served_probabilities_equal_predicts_for_the_same_raw_image(
    server: http_server.ModelServer, model_files: ModelFiles, tmp_path: Path
) -> None:
    # Fashion-MNIST's own layout (dark background, garment across the full width, centred): predict
    # reads the PNG back unchanged, so both give the model the same raw pixels.
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24] = np.linspace(30, 255, 28, dtype=np.uint8)
    image_file = write_png(tmp_path / "garment.png", pixels)
    assert np.array_equal(predict.load_image(image_file), pixels.astype(np.float32))

    [from_predict] = predict.classify_files([image_file], model_files.model_file, 10)
    status, answer = post(f"{server.url}/invocations", {"inputs": pixels.tolist(), "top": 10})
    assert status == 200
    served = scores(answer["predictions"][0])
    assert served == pytest.approx(scores(from_predict["predictions"]), abs=1e-6)
    # The pixels were standardized, by the model's first layer: the trained layers after it, given
    # (pixels - mean) / std, answer what was served; given the raw pixels, they answer otherwise.
    served_row = [served[index] for index in range(10)]
    standardized = (pixels.astype(np.float32) - model_files.mean) / model_files.std  # (1, 28, 28)
    np.testing.assert_allclose(served_row, trained_layers(server.classifier.model, standardized), atol=1e-5)
    raw_scores = trained_layers(server.classifier.model, pixels[np.newaxis].astype(np.float32))
    assert not np.allclose(served_row, raw_scores, atol=1e-3)


def _body(inputs: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def bad_request(body: bytes, status: int, fragments: tuple[str, ...], case: str, sees: str, name: str):
    """One row of the bad-request table: what is sent, the status and what the one-line error says."""
    return pytest.param(body, status, fragments, marks=reliability(case=case, sees=sees), id=name)


ZEROS = np.zeros((28, 28), dtype=int)
BAD_REQUESTS = [
    bad_request(b"inputs=1", 400, ("not JSON",), "serve: a body that is not JSON",
                "HTTP 400, one-line JSON error 'the body is not JSON (...)'", "not-json"),
    bad_request(b'{"images": []}', 400, ('{"inputs"',), "serve: a JSON body without 'inputs'",
                "HTTP 400, one-line JSON error showing the expected {\"inputs\": [...]}", "no-inputs"),
    bad_request(_body(np.zeros((28, 28, 3), dtype=int).tolist()), 400, ("(28, 28, 3)", "(28, 28)"),
                "serve: a colour image (28x28x3)", "HTTP 400 naming the shape received and (28, 28) expected",
                "colour"),
    bad_request(_body(np.zeros((32, 32), dtype=int).tolist()), 400, ("(32, 32)", "(count, 28, 28)"),
                "serve: an image of another size (32x32)", "HTTP 400 naming the shape received and expected",
                "32x32"),
    bad_request(_body([[0] * 28] * 27 + [[0] * 27]), 400, ("not a grid of numbers",),
                "serve: rows of different lengths", "HTTP 400 'not a grid of numbers', the shape expected",
                "ragged"),
    bad_request(_body([["0"] * 28] * 28), 400, ("must hold numbers",), "serve: pixel values given as text",
                "HTTP 400 'must hold numbers'", "text"),
    bad_request(_body((ZEROS + 300).tolist()), 400, ("0-255", "row 0 column 0 is 300"),
                "serve: pixel values above 255", "HTTP 400 naming 0-255 and the first pixel outside",
                "over-255"),
    bad_request(_body((ZEROS - 1.5).tolist()), 400, ("not standardized", "is -1.5"),
                "serve: standardized (negative) values instead of raw pixels",
                "HTTP 400 'pixel values must be 0-255 (raw grey levels, not standardized)'", "standardized"),
    bad_request(json.dumps({"inputs": [[float("nan")] * 28] * 28}).encode(), 400, ("is nan",),
                "serve: NaN pixel values", "HTTP 400 naming 0-255 and the NaN pixel", "nan"),
    bad_request(_body(np.zeros((protocol.MAX_IMAGES + 1, 28, 28), dtype=int).tolist()), 400,
                (f"{protocol.MAX_IMAGES + 1} images", f"at most {protocol.MAX_IMAGES}"),
                f"serve: more than {protocol.MAX_IMAGES} images in one request",
                "HTTP 400 naming the count and the limit", "too-many"),
    bad_request(_body(ZEROS.tolist(), top=11), 400, ("'top'", "1 to 10"), "serve: 'top' outside 1-10",
                "HTTP 400 naming 'top' and 1 to 10", "top"),
    bad_request(_body(ZEROS.tolist(), size=28), 400, ("unknown keys ['size']",), "serve: an unknown key",
                "HTTP 400 naming the unknown key", "unknown-key"),
    bad_request(b" " * (protocol.MAX_BODY_BYTES + 1), 413, ("bytes", f"at most {protocol.MAX_BODY_BYTES:,}"),
                "serve: a body over 20 MiB", "HTTP 413 naming the size and the limit, body left unread",
                "too-large"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "fragments"), BAD_REQUESTS)
def test_a_bad_request_gets_one_line_naming_what_is_wrong(
    server: http_server.ModelServer, body: bytes, status: int, fragments: tuple[str, ...]
) -> None:
    answer_status, answer = post(f"{server.url}/invocations", body)
    assert answer_status == status and list(answer) == ["error"]
    assert "\n" not in answer["error"] and all(fragment in answer["error"] for fragment in fragments), answer
    # The server keeps serving.
    assert post(f"{server.url}/invocations", {"inputs": ZEROS.tolist()})[0] == 200


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        pytest.param(
            {"Transfer-Encoding": "chunked"}, 411, "a Content-Length header is needed", id="chunked",
            marks=reliability(
                case="serve: a POST without Content-Length (a chunked body)",
                sees="HTTP 411 'a Content-Length header is needed'",
            ),
        ),
        pytest.param(
            {"Content-Length": str(10 * 2**30)}, 413, "10,737,418,240 bytes", id="claims-10-GB",
            marks=reliability(
                case="serve: a POST announcing a 10 GB body",
                sees="HTTP 413 at once, naming the size and the limit; nothing read",
            ),
        ),
    ],
)  # fmt: skip
def test_a_body_without_a_usable_length_is_refused_unread(
    server: http_server.ModelServer, headers: dict[str, str], status: int, fragment: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        connection.putrequest("POST", "/invocations")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == status and fragment in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_other_paths_are_not_found(server: http_server.ModelServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{server.url}/predict", timeout=10)
    assert raised.value.code == 404 and "/invocations" in json.loads(raised.value.read())["error"]


# ---- the command ----


def read_lines(stream) -> queue.Queue:
    """Lines of a text stream, read by a background thread (so a wait can time out)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_the_command_serves_the_projects_model_until_ctrl_c(
    project: Path, model_files: ModelFiles, tmp_path: Path
) -> None:
    model_files.install(project)
    run_id = "0123456789abcdef" * 2  # 32 hexadecimal digits, like MLflow's
    (project / "data" / "model" / "mlflow_run.json").write_text(
        json.dumps({"run_id": run_id, "experiment_id": "1", "tracking_uri": "sqlite:///mlflow.db"})
    )
    stderr_file = tmp_path / "serve.err"
    with open(stderr_file, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fashion_cnn.tools.serve", "--port", "0"],
            cwd=project, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        lines = read_lines(process.stdout)
        try:
            start = lines.get(timeout=START_SECONDS)
        except queue.Empty:
            pytest.fail(f"no start line in {START_SECONDS} s:\n{stderr_file.read_text()[-3000:]}")
        model_file = project / "data" / "model" / "model.keras"
        assert start.startswith(f"serving {model_file} (MLflow run {run_id}) on http://127.0.0.1:"), start
        url = start.split(" on ")[-1].strip().removesuffix("/invocations")
        status, answer = post(f"{url}/invocations", {"inputs": raw_images(2).tolist()})
        assert status == 200 and len(answer["predictions"]) == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert lines.get(timeout=10).strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert '"POST /invocations HTTP/1.1" 200' in stderr_file.read_text()


@reliability(
    case="serve: no trained model in data/model",
    sees="one line naming data/model/model.keras and `dvc repro`; exit 1",
)
def test_without_a_trained_model_it_says_so_in_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.main(["--port", "0"]) == 1
    error = capsys.readouterr().err
    model_file = project / "data" / "model" / "model.keras"
    assert error.count("\n") == 1 and error.startswith(f"error: {model_file}: ") and "dvc repro" in error


@reliability(
    case="serve: the port is taken by another program",
    sees="one line 'cannot listen on 127.0.0.1:PORT', choose another with --port or SERVE_PORT; exit 1",
)
def test_a_port_in_use_is_one_line(
    project: Path, model_files: ModelFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    model_files.install(project)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--port", str(port)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in error and "SERVE_PORT" in error


# ---- a model without its standardization is refused by serve and predict ----


@reliability(
    case="serve, predict: a model.keras without its standardization layer (an older model)",
    sees="one line naming the file, 'the model takes standardized images' and `dvc repro train`",
)
def test_a_model_without_its_standardization_is_refused_in_one_line(tmp_path: Path) -> None:
    """The layers alone take standardized images: given raw grey levels they would answer nonsense
    without a word, so the loader serve and predict use refuses them."""
    import keras

    from fashion_cnn.model.architecture import build_model

    keras.utils.set_random_seed(0)
    model_file = tmp_path / "model.keras"
    build_model(small_cnn_config().model).save(model_file)
    with pytest.raises(DataError) as refused:
        classifier.load_classifier(model_file)
    message = str(refused.value)
    assert message.startswith(f"{model_file}: the model takes standardized images, not grey levels 0..255")
    assert "dvc repro train" in message and "\n" not in message


# ---- a model that carries code is refused by serve and predict, and its code never runs ----


@functools.cache
def planted_layer_class() -> type:
    """A custom Keras layer that writes its marker file when called, registered in this process."""
    import keras

    @keras.saving.register_keras_serializable(package="planted")
    class PlantedLayer(keras.layers.Layer):
        def __init__(self, marker: str = "", **options: Any) -> None:
            super().__init__(**options)
            self.marker = marker

        def call(self, inputs):
            Path(self.marker).write_text("ran")
            return inputs

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "marker": self.marker}

    return PlantedLayer


def lambda_layer(marker: Path):
    import keras

    marker_name = str(marker)  # A closure over a string: Keras writes it into the file as JSON.
    return keras.layers.Lambda(
        lambda tensor: (Path(marker_name).write_text("ran"), tensor)[1], name="planted"
    )


def custom_layer(marker: Path):
    return planted_layer_class()(marker=str(marker), name="planted")


def plant_model(model_file: Path, marker: Path, make_layer: Callable[[Path], Any]) -> None:
    """Save a working 28x28 -> 10 model with the planted layer in the middle; the marker is removed."""
    import keras

    inputs = keras.Input((28, 28, 1))
    hidden = make_layer(marker)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden)).save(model_file)
    # Building the model called the layer once; from here on, the marker means code from the file ran.
    assert marker.read_text() == "ran"
    marker.unlink()


@pytest.mark.parametrize(
    ("make_layer", "named"),
    [
        pytest.param(
            lambda_layer, "Lambda layer 'planted'", id="lambda",
            marks=reliability(
                case="model.keras carrying a Lambda layer (Python code)",
                sees="serve, predict: one line naming the file and 'Lambda layer'; exit 1; its code not run",
            ),
        ),
        pytest.param(
            custom_layer, "custom class 'planted>PlantedLayer' from module 'test_serve' in layer 'planted'",
            id="custom-object",
            marks=reliability(
                case="model.keras naming a custom (non-Keras) layer class",
                sees="serve, predict: one line naming the file and the class; exit 1; its code not run",
            ),
        ),
    ],
)  # fmt: skip
def test_a_model_carrying_code_is_refused_and_its_code_never_runs(
    project: Path,
    model_files: ModelFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_layer: Callable[[Path], Any],
    named: str,
) -> None:
    model_files.install(project)
    model_file = project / "data" / "model" / "model.keras"
    marker = tmp_path / "code-ran"
    plant_model(model_file, marker, make_layer)
    image = write_png(tmp_path / "garment.png", np.zeros((28, 28)))

    assert serve.main(["--port", "0"]) == 1
    assert predict.main([str(image)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    for error in errors:
        assert error.startswith(f"error: {model_file}: refused: the model carries code ({named})"), error
    assert not marker.exists()


@pytest.mark.parametrize("make_layer", [lambda_layer, custom_layer], ids=["lambda", "custom-object"])
@reliability(
    case="model.keras carrying code, read by evaluate or model_figures",
    sees="one line naming the file and the code it carries; exit 1; its code not run",
)
def test_the_loader_every_stage_uses_refuses_code_before_keras_reads_it(
    tmp_path: Path, make_layer: Callable[[Path], Any]
) -> None:
    """trained_model.load_model (evaluate, model_figures, predict, serve): a registered custom class
    would pass Keras's safe mode and run; the artifact check refuses it first."""
    marker = tmp_path / "code-ran"
    plant_model(tmp_path / "model.keras", marker, make_layer)
    with pytest.raises(DataError, match="refused: the model carries code"):
        trained_model.load_model(tmp_path / "model.keras")
    assert not marker.exists()


def test_safe_mode_alone_refuses_the_lambda_without_running_it(tmp_path: Path) -> None:
    """The second line of defence: Keras safe mode, as trained_model.load_model uses it."""
    import keras

    marker = tmp_path / "code-ran"
    plant_model(tmp_path / "model.keras", marker, lambda_layer)
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    assert not marker.exists()


def test_every_model_preset_passes_the_artifact_check(tmp_path: Path) -> None:
    """The check must not refuse what the project itself builds and saves (conf/model/*.yaml)."""
    import keras
    import yaml

    from fashion_cnn.model.architecture import build_model
    from fashion_cnn.training.config import ProjectConfig

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    presets = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))
    assert len(presets) >= 5
    for preset in presets:
        raw["model"] = yaml.safe_load(preset.read_text())
        model = build_model(ProjectConfig.from_params(raw).model)
        # The recipe's kind of compile state is saved too (skipped by the check: never loaded).
        model.compile(optimizer=keras.optimizers.AdamW(), loss="sparse_categorical_crossentropy")
        model.save(tmp_path / f"{preset.stem}.keras")
        artifact.check_artifact(tmp_path / f"{preset.stem}.keras", "rebuild it")
