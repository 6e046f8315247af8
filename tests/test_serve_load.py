"""The model server under load (fashion_cnn.serving.http_server): a burst of simultaneous connections,
clients that stall or go away mid-request, and concurrent requests batched into one forward pass.

A real ModelServer on a free port of 127.0.0.1 around test_serve's small_cnn (built, untrained), asked
over real sockets. No timing is asserted beyond generous bounds that hold on a loaded 2-core machine.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from test_serve import ModelFiles, model_files, post, raw_images  # noqa: F401 - model_files is a fixture.

from fashion_cnn.serving import classifier, http_server
from fashion_cnn.serving.batcher import MicroBatcher
from fashion_cnn.serving.forward import compiled_forward

reliability = pytest.mark.reliability
# The burst: good requests (one image each, all different) and bad ones (a pixel of 300), all at once.
GOOD_REQUESTS = 200
BAD_REQUESTS = 40
# The test server's bounds: silence mid-request, and the whole body.
READ_TIMEOUT = 1.0
BODY_SECONDS = 3.0
# A request beside a stalled client is answered within this (it takes milliseconds; the slack is for
# a loaded machine).
ANSWER_BOUND = 5.0
# The stalled client is dropped within its bound plus this.
DROP_SLACK = 2.0


@pytest.fixture(scope="module")
def loaded(model_files: ModelFiles) -> classifier.Classifier:  # noqa: F811 - the imported fixture.
    """test_serve's model (its standardization inside), loaded as the server loads it."""
    return classifier.load_classifier(model_files.model_file)


@pytest.fixture(scope="module")
def server(loaded: classifier.Classifier) -> Iterator[http_server.ModelServer]:
    """The real ModelServer with short read bounds, serving from a thread."""
    model_server = http_server.ModelServer(loaded, 0, read_timeout=READ_TIMEOUT, body_seconds=BODY_SECONDS)
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model_server
    finally:
        model_server.shutdown()
        model_server.server_close()


def request_bytes(body: bytes) -> bytes:
    """A whole HTTP/1.0 POST /invocations with `body`."""
    head = (
        f"POST /invocations HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Answer:
    """One burst client's outcome: the HTTP status and JSON, or the exception; seconds from connect."""

    status: int = 0
    document: Any = None
    failure: str = ""
    seconds: float = 0.0


def burst(port: int, bodies: list[bytes]) -> list[Answer]:
    """Open one connection per body at the same instant, send them and read every answer."""
    answers = [Answer() for _ in bodies]
    barrier = threading.Barrier(len(bodies))

    def client(index: int) -> None:
        answer = answers[index]
        barrier.wait()
        start = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("POST", "/invocations", bodies[index], {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer.status, answer.document = response.status, json.loads(response.read())
        except Exception as error:  # Reset, refused or timed out: the test reports each one.
            answer.failure = repr(error)
        finally:
            answer.seconds = time.perf_counter() - start
            connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


@reliability(
    case=f"serve: a burst of {GOOD_REQUESTS + BAD_REQUESTS} simultaneous connections "
    f"({GOOD_REQUESTS} good requests, {BAD_REQUESTS} bad)",
    sees="all answered, none reset: each good one its own classes (within 1e-6), "
    "each bad one a 400 JSON line",
)
def test_a_burst_of_connections_is_all_answered_right(
    server: http_server.ModelServer, loaded: classifier.Classifier
) -> None:
    images = raw_images(GOOD_REQUESTS, seed=7)
    bad_image = np.zeros((28, 28), dtype=int)
    bad_image[3, 5] = 300
    bodies = [json.dumps({"inputs": image.tolist(), "top": 10}).encode() for image in images]
    bodies += [json.dumps({"inputs": bad_image.tolist()}).encode()] * BAD_REQUESTS
    server.batcher.batch_sizes.clear()

    answers = burst(server.server_address[1], bodies)

    failures = [answer.failure for answer in answers if answer.failure]
    assert failures == [], f"{len(failures)} of {len(answers)} connections failed: {failures[:3]}"
    expected = loaded.probabilities(images)  # (200, 10), the eager model on all of them at once
    for answer, probabilities in zip(answers[:GOOD_REQUESTS], expected, strict=True):
        assert answer.status == 200, answer.document
        [top] = answer.document["predictions"]
        served = np.array([item["probability"] for item in sorted(top, key=lambda item: item["index"])])
        np.testing.assert_allclose(served, probabilities, atol=1e-6)
    for answer in answers[GOOD_REQUESTS:]:
        assert answer.status == 400 and list(answer.document) == ["error"]
        assert "\n" not in answer.document["error"] and "row 3 column 5 is 300" in answer.document["error"]
    # Requests that arrived together shared forward passes.
    assert max(server.batcher.batch_sizes) > 1, list(server.batcher.batch_sizes)
    milliseconds = sorted(answer.seconds * 1000 for answer in answers)
    print(
        f"burst: {len(answers)} connections, {len(answers) - len(failures)} answered, "
        f"p50 {milliseconds[len(answers) // 2]:.0f} ms, p99 {milliseconds[int(len(answers) * 0.99)]:.0f} ms, "
        f"largest forward pass {max(server.batcher.batch_sizes)} requests"
    )


def read_answer(connection: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer on a raw socket (HTTP/1.0: read until closed)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def asked_while(server: http_server.ModelServer, busy: threading.Event) -> list[float]:
    """Seconds each good request took, asked one after another until `busy` is cleared."""
    seconds = []
    while busy.is_set():
        start = time.perf_counter()
        status, _ = post(f"{server.url}/invocations", {"inputs": raw_images(1)[0].tolist()})
        assert status == 200
        seconds.append(time.perf_counter() - start)
    return seconds


@pytest.mark.parametrize(
    ("trickle", "said"),
    [
        pytest.param(
            False, f"no data for {READ_TIMEOUT:g} s after 100 of 5,000 body bytes", id="silent",
            marks=reliability(
                case="serve: a client that sends the headers and part of the body, then stalls",
                sees="HTTP 408 and one log line after 10 s of silence; "
                "others answered meanwhile; no traceback",
            ),
        ),
        pytest.param(
            True, f"the body took over {BODY_SECONDS:g} s", id="trickling",
            marks=reliability(
                case="serve: a client that trickles its body a byte at a time",
                sees="HTTP 408 and one log line once the body has taken 30 s; others answered meanwhile",
            ),
        ),
    ],
)  # fmt: skip
def test_a_stalled_client_is_dropped_and_never_delays_the_others(
    server: http_server.ModelServer, capfd: pytest.CaptureFixture[str], trickle: bool, said: str
) -> None:
    stalled = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30)
    busy = threading.Event()
    busy.set()
    others: list[float] = []
    helper = threading.Thread(target=lambda: others.extend(asked_while(server, busy)), daemon=True)
    try:
        start = time.perf_counter()
        stalled.sendall(request_bytes(b" " * 5000)[:-4900])  # The headers and 100 bytes of the body.
        helper.start()
        while trickle and time.perf_counter() - start < BODY_SECONDS + DROP_SLACK + 2:
            try:
                stalled.sendall(b" ")
            except OSError:  # Dropped by the server.
                break
            time.sleep(READ_TIMEOUT / 3)
        status, answer = read_answer(stalled)
        dropped_after = time.perf_counter() - start
    finally:
        busy.clear()
        helper.join(timeout=60)
        stalled.close()
    assert status == 408 and said in answer["error"] and "\n" not in answer["error"], answer
    bound = BODY_SECONDS if trickle else READ_TIMEOUT
    assert bound - 0.2 < dropped_after < bound + DROP_SLACK, dropped_after
    assert others and max(others) < ANSWER_BOUND, others
    log = capfd.readouterr().err
    assert "Traceback" not in log and log.count("client stalled") == 1, log


@pytest.mark.parametrize(
    "reset",
    [
        pytest.param(
            False, id="closed",
            marks=reliability(
                case="serve: a client that closes its connection mid-body",
                sees="one log line 'client went away: connection closed after N of M body bytes', "
                "no traceback",
            ),
        ),
        pytest.param(
            True, id="reset",
            marks=reliability(
                case="serve: a client that resets its connection mid-body (RST)",
                sees="one log line 'client went away: ConnectionResetError ...', no traceback",
            ),
        ),
    ],
)  # fmt: skip
def test_a_client_that_goes_away_mid_body_costs_one_log_line(
    server: http_server.ModelServer, capfd: pytest.CaptureFixture[str], reset: bool
) -> None:
    capfd.readouterr()
    leaving = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30)
    if reset:  # Closing with a zero linger time sends RST instead of FIN.
        leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leaving.sendall(request_bytes(b" " * 5000)[:-4900])
    time.sleep(0.2)  # The server is reading the body.
    leaving.close()
    log = ""
    deadline = time.monotonic() + 10
    while "client went away" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log += capfd.readouterr().err
    time.sleep(0.5)  # Anything the handler would still print (an answer to nobody, a traceback).
    log += capfd.readouterr().err
    gone = [line for line in log.splitlines() if "client went away" in line]
    assert len(gone) == 1 and "after 100 of 5,000 body bytes; not answered" in gone[0], log
    assert ("ConnectionResetError" in gone[0]) == reset, gone
    assert "Traceback" not in log and "Error" not in log.replace(gone[0], ""), log
    assert post(f"{server.url}/invocations", {"inputs": raw_images(1)[0].tolist()})[0] == 200


# ---- the forward pass: batched and compiled, the same numbers ----


def test_batched_compiled_probabilities_equal_the_eager_models(loaded: classifier.Classifier) -> None:
    images = raw_images(64, seed=3).astype(np.float32)
    eager = np.concatenate([loaded.probabilities(image[np.newaxis]) for image in images])
    compiled = compiled_forward(loaded.model)
    np.testing.assert_allclose(loaded.probabilities(images, forward=compiled), eager, atol=1e-6)
    # Through the batcher, from 16 threads at once: each request its own rows.
    batcher = MicroBatcher(lambda batch: loaded.probabilities(batch, forward=compiled))
    try:
        answers: dict[int, np.ndarray] = {}

        def ask(index: int) -> None:
            answers[index] = batcher.probabilities(images[index::16])

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        batcher.close()
    for index in range(16):
        np.testing.assert_allclose(answers[index], eager[index::16], atol=1e-6)


def test_the_batcher_combines_waiting_requests_up_to_its_limit() -> None:
    release = threading.Event()
    calls: list[int] = []

    def probabilities(batch: np.ndarray) -> np.ndarray:
        """Row i of the answer is the batch's image i's mean, 10 times; the first call waits for release."""
        calls.append(len(batch))
        release.wait(10)
        return np.repeat(batch.mean(axis=(1, 2))[:, np.newaxis], 10, axis=1)

    batcher = MicroBatcher(probabilities, max_images=8)
    jobs = [np.full((count, 28, 28), float(index)) for index, count in enumerate([1, 3, 3, 3, 5, 1])]
    answers: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(
            target=lambda index=index: answers.update({index: batcher.probabilities(jobs[index])})
        )
        for index in range(len(jobs))
    ]
    threads[0].start()
    while not calls:  # The first request is in the model: the others queue behind it.
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
        time.sleep(0.05)  # In order.
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    batcher.close()
    # 1 alone (the others came later); 3+3, the next 3 would pass 8 so it waits; 3+5 = 8; the last 1.
    assert calls == [1, 6, 8, 1]
    for index, job in enumerate(jobs):
        assert answers[index].shape == (len(job), 10) and (answers[index] == index).all()


def test_a_failing_forward_pass_fails_each_of_its_requests_and_the_batcher_goes_on() -> None:
    outcomes = iter([RuntimeError("the model broke"), None])

    def probabilities(batch: np.ndarray) -> np.ndarray:
        if (error := next(outcomes)) is not None:
            raise error
        return np.zeros((len(batch), 10))

    batcher = MicroBatcher(probabilities)
    try:
        with pytest.raises(RuntimeError, match="the model broke"):
            batcher.probabilities(np.zeros((1, 28, 28)))
        assert batcher.probabilities(np.zeros((2, 28, 28))).shape == (2, 10)
    finally:
        batcher.close()


# ---- the load benchmark's table (benchmarks/serve_load.py measures; this only formats) ----


def bench_report(now_16: float, now_p99: float) -> dict[str, Any]:
    """A serve_bench.json as the benchmark writes it, for 1 and 16 clients."""

    def level(rate: float, p50: float, p99: float) -> dict[str, Any]:
        return {"requests_per_second": rate, "p50_ms": p50, "p99_ms": p99, "failures": 0}

    return {
        "measured_at": "2026-12-05 10:00", "machine": {"cpu_model": "AMD EPYC", "logical_cpus": 2},
        "seconds_per_level": 20.0, "model": "small_cnn",
        "baseline": {"ref": "8e317f2", "commit": "8e317f2" * 5},
        "candidate": {"commit": "abcdef0" * 5, "working_tree_changes": False},
        "results": {
            "baseline": {"concurrency": {"1": level(82, 11.0, 16.0), "16": level(91, 170.0, 230.0)},
                         "big_request": {"images": 1000, "images_per_second": 2055.0}},
            "candidate": {"concurrency": {"1": level(240, 4.0, 8.0), "16": level(now_16, 30.0, now_p99)},
                          "big_request": {"images": 1000, "images_per_second": 3400.0}},
        },
    }  # fmt: skip


def test_the_bench_table_shows_both_servers_and_whether_the_target_held(tmp_path) -> None:
    from benchmarks import serve_table

    text = serve_table.format_table(bench_report(500.0, 40.0))
    assert "| 16 | 91 | 170.0 | 230.0 | 500 | 30.0 | 40.0 | 5.5x |" in text
    assert "2,055 images/s today, 3,400 now" in text and "**met**" in text
    assert "**not met**" in serve_table.format_table(bench_report(500.0, 60.0))  # p99 over 50 ms
    assert "**not met**" in serve_table.format_table(bench_report(400.0, 40.0))  # 4.4x
    doc = tmp_path / "serving.md"
    doc.write_text(f"# Serving\n\nintro\n\n{serve_table.SECTION}")
    serve_table.write_doc(doc, bench_report(500.0, 40.0))
    assert doc.read_text().startswith("# Serving\n\nintro\n\n## Under load") and "5.5x" in doc.read_text()
