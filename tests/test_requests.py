"""What only a real `bentoml serve` shows about requests: bodies bounded on the wire (a declared length answered
before the body, a client that leaves mid-body logged as 499), slow headers closed (also after an answer), a
worker's cap on open connections, SIGTERM drained, overload and the request timeout answered 503 and 504 as
/docs.json says. Every refusal of the routes themselves is checked
in-process, without a server: tests/test_app.py.

The digits ResNet-18 (answers, not accuracy, are under test) in a temporary model store.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image

from tests.stores import serving_home
from tests.test_service import serving

pytestmark = pytest.mark.slow

SERVING = """
device: cpu
default_model: digits-small
models: [digits-small]
ensembles:
  default: {members: [digits-small], voting: soft}
batching: {max_batch_size: 16, max_latency_ms: 5000}
limits: {max_images_per_request: 4, max_image_bytes: 100000, max_image_pixels: 1000000}
connections: {header_timeout_s: 2, body_timeout_s: 3, drain_s: 20}
"""


@pytest.fixture(scope="module")
def store(digits_onnx, tmp_path_factory) -> dict:
    return serving_home(tmp_path_factory.mktemp("bentoml"), SERVING, ("digits-small", digits_onnx))


@pytest.fixture(scope="module")
def server(store):
    with serving([], store) as (url, proc):
        assert proc.poll() is None, Path(store["LOG_PATH"]).read_text()[-4000:]
        yield url


@pytest.fixture(scope="module")
def png(digits_root) -> bytes:
    return next((digits_root / "test" / "3").glob("*.png")).read_bytes()


def error_of(response: httpx.Response) -> str:
    """The service's error body: exactly {"error": message}."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), response.text
    return body["error"]


def _raw(server: str, request: bytes, then: bytes = b"", close_after: bool = False) -> bytes:
    """Send `request` (and `then`) on a socket of its own; the bytes answered until the server closes or 30 s pass;
    with `close_after`, hang up without reading (a client that leaves mid-body)."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request + then)
        if close_after:
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_bodies_are_bounded_on_the_wire_and_no_client_gets_a_500(server, png, store):
    """On real connections: a Content-Length over the bound answered 413 before any of the body is sent, and the
    connection closed; a client that hangs up in the middle of its body logged as 499; uploads that resize to
    millions of pixels answered; raw bodies and multipart parts give one answer; nothing a 500 or a traceback."""
    file = ("images", ("digit.png", png, "image/png"))
    bound = 4 * 100_000 + 1024 * 1024  # the SERVING limits: 4 images of 100,000 bytes, and 1 MiB for the rest
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {bound + 1}\r\n\r\n").encode()  # fmt: skip
    answer = _raw(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert f"the body is {bound + 1} bytes; the limit is {bound}".encode() in answer, answer
    assert b"connection: close" in answer.lower(), answer[:300]
    # a client that leaves after 100 of 10,000 bytes of its JSON body
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    _raw(server, head, b'{"top_k": ' + b" " * 90, close_after=True)
    ok = httpx.post(f"{server}/classify", files=[file], timeout=30)
    assert ok.status_code == 200, ok.text
    raw = httpx.post(f"{server}/classify", content=png, headers={"content-type": "image/png"}, timeout=30)
    assert raw.status_code == 200 and raw.json() == ok.json(), raw.text
    # four 661-byte PNGs of 200,000 x 1 pixels (each once resized whole to 6,400,000 x 32): answered
    out = io.BytesIO()
    Image.new("RGB", (200_000, 1)).save(out, "PNG")
    thin = httpx.post(f"{server}/classify", files=[("images", ("t.png", out.getvalue(), "image/png"))] * 4, timeout=60)
    assert thin.status_code == 200 and len(thin.json()) == 4, thin.text
    got = httpx.get(f"{server}/classify", timeout=30)
    assert got.status_code == 405 and error_of(got) == "/classify takes POST, not GET"
    # a body that stops half-way: 408 after connections.body_timeout_s (3 s here), not a 504 after the request timeout
    status, stalled = _stalled_upload(server)
    assert status == 408 and "(connections.body_timeout_s)" in stalled["error"], (status, stalled)
    # logged by the access line at INFO as 499 (a client that closed its request, nginx's status), not as a 500
    log = Path(store["LOG_PATH"]).read_text()
    assert "length=10000) (status=499," in log, log[-3000:]
    assert "Traceback" not in log and "[ERROR]" not in log and "status=500" not in log, log[-4000:]


def test_a_connection_that_sends_nothing_useful_is_closed(server):
    """Request headers sent a byte every 0.5 s, and a connection that sends nothing: both closed after
    connections.header_timeout_s (2 s here), long before they finish."""
    host, port = server.removeprefix("http://").split(":")
    for trickle in (b"POST /classify HTTP/1.1\r\nHost: x\r\n" * 4, b""):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.settimeout(0.5)
            closed = False
            for byte in trickle[:40] or [None] * 40:  # at most 20 s
                try:
                    if byte is not None:
                        sock.sendall(bytes([byte]))
                    closed = sock.recv(1024) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset or broken pipe: closed as well
                    closed = True
                if closed:
                    break
            assert closed, f"still open after {len(trickle[:40]) or 40} x 0.5 s"


def test_a_request_head_past_16_kb_is_answered_400_and_closed(server):
    """Header lines sent without end, 64 KB of them, a line at a time and all at once (one read for the server):
    answered 400 and closed, as h11 does (uvicorn's httptools parser would hold them all; service/connections.py
    bounds them), not left to the header timeout."""
    host, port = server.removeprefix("http://").split(":")
    start, line = b"POST /classify HTTP/1.1\r\nHost: x\r\n", b"X-Filler: " + b"a" * 1000 + b"\r\n"
    for pieces in ([start, *[line] * 64], [start + line * 64]):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            answer = b""
            try:
                for piece in pieces:
                    sock.sendall(piece)
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:  # reset once it closed: what it answered first is in `answer`
                pass
        assert answer.startswith(b"HTTP/1.1 400"), (len(pieces), answer[:300])
        assert answer.endswith(b'{"error": "the request\'s headers are over 16384 bytes"}'), answer[-300:]


def _answer(sock: socket.socket) -> bytes:
    """One whole answer (headers and a Content-Length body) read from `sock`."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
        chunk = sock.recv(65536)
        assert chunk, f"closed before its answer: {answer!r}"
        answer += chunk
    return answer


def _closed_after_answer(
    server: str, request: bytes, then: bytes, step_s: float = 0.25, give_up_s: float = 15
) -> float:
    """Send `request`, read its whole answer, then send `then` a byte every `step_s`: the seconds from the answer
    until the server closed the connection, or `give_up_s` if it had not by then (the client is done sending)."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = _answer(sock)
        assert b"connection: close" not in answer.lower(), answer  # kept alive: the server must close it itself
        answered = time.monotonic()
        sock.settimeout(step_s)
        for byte in then:
            if time.monotonic() - answered > give_up_s:
                break
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1024) == b"":
                    return time.monotonic() - answered
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed as well
                return time.monotonic() - answered
    return give_up_s


def test_each_request_has_header_timeout_s_from_the_previous_answer(server, png):
    """After an answer, a kept-alive connection has connections.header_timeout_s (2 s here) for its next request's
    headers, whatever it sends meanwhile: the next headers a byte every 0.25 s; or the rest of a body its answer did
    not wait for, then headers (BentoML's /livez answers without reading a body, and keeps the connection; the
    service's routes close it: tests/test_app.py). Each is closed within 2 s of its answer (plus slack for a loaded
    machine); the second stayed open for as long as the client went on sending (issue 31), as the header timer
    waited for h11 to be back at IDLE, which the unfinished body put off past the deadline."""
    trickle = b"POST /classify HTTP/1.1\r\nHost: x\r\n" * 4
    upload = _multipart([("images", "digit.png", png)])
    first = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
             f"Content-Length: {len(upload)}\r\n\r\n").encode() + upload  # fmt: skip
    assert _closed_after_answer(server, first, trickle) < 2 + 2
    unread = b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n{"
    assert _closed_after_answer(server, unread, b" " * 59 + trickle) < 2 + 2


def _multipart(parts: list[tuple[str, str, bytes]]) -> bytes:
    """A multipart/form-data body with the boundary `b`: (field, file name, bytes) each."""
    body = b"".join(
        f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for field, name, data in parts
    )
    return body + b"--b--\r\n"


CAPPED = SERVING.replace(
    "header_timeout_s: 2, body_timeout_s: 3,", "header_timeout_s: 60, body_timeout_s: 60,"
).replace("drain_s: 20}", "drain_s: 20, max_open: 8, backlog: 100}")


def test_a_worker_past_its_connection_cap_answers_503_and_says_so_once(store, png, tmp_path):
    """connections.max_open (8 here): with 8 connections open, each answered once and then holding a request whose
    body is still coming, every further connection is answered 503 with Retry-After and the service's error body,
    without its request being read, and closed; once the 8 have closed a request is answered again; the log says
    so in one line for the whole episode (the timeouts here are long enough for nothing else to close them). The
    listening socket has connections.backlog's queue (its Send-Q in `ss`)."""
    assert "max_open: 8" in CAPPED
    (tmp_path / "serving.yaml").write_text(CAPPED)
    log = tmp_path / "log"
    env = {**store, "SERVING_CONFIG": str(tmp_path / "serving.yaml"), "LOG_PATH": str(log)}
    file = [("images", ("digit.png", png, "image/png"))]
    with serving([], env) as (url, proc):
        assert proc.poll() is None, log.read_text()[-4000:]
        host, port = url.removeprefix("http://").split(":")
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
        assert listening[2] == "100", listening  # State Recv-Q Send-Q Local Peer
        held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(8)]
        try:
            for sock in held:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _answer(sock).startswith(b"HTTP/1.1 200"), "a connection under the cap was refused"
                sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
                             b"\r\nContent-Length: 1000\r\n\r\n--b\r\n")  # fmt: skip
            refused = [httpx.post(f"{url}/classify", files=file, timeout=30) for _ in range(3)]
            for answer in refused:
                assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
                assert answer.headers["connection"] == "close", answer.headers
                assert "8 open connections (connections.max_open)" in error_of(answer)
            with socket.create_connection(
                (host, int(port)), timeout=30
            ) as silent:  # sends nothing, answered all the same
                answer = _answer(silent)
                assert answer.startswith(b"HTTP/1.1 503"), answer
                assert silent.recv(1024) == b"", "not closed after its 503"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20  # the worker sees the 8 close, then has room again
        while (ok := httpx.post(f"{url}/classify", files=file, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, ok.text
            time.sleep(0.1)
        assert ok.status_code == 200, ok.text
    text = log.read_text()
    assert text.count("holds its cap of 8 open connections") == 1, text[-4000:]
    assert "Traceback" not in text and "[ERROR]" not in text, text[-4000:]


# an upload the drain test holds open: the body it promises never comes until the test closes it
DRAINING = SERVING.replace("body_timeout_s: 3, drain_s: 20", "body_timeout_s: 60, drain_s: 60")


def _until(check, seconds: float, what: str) -> None:
    """Poll `check` until it holds; fail naming `what` after `seconds` (a passing run returns at once)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)


def test_sigterm_drains_instead_of_resetting_kept_alive_connections(store, tmp_path):
    """On SIGTERM /readyz answers 503 at once, kept-alive connections keep being answered, each answer with
    Connection: close, while any request is in flight, and the server exits once none has been for a second.

    No sleep orders it: an upload begun before SIGTERM (its `Expect: 100-continue` answered, so the service is
    reading its body) and left unfinished keeps the drain open however slowly the other requests come; the test
    then closes it, and the server exits."""
    (tmp_path / "serving.yaml").write_text(DRAINING)
    env = {**store, "SERVING_CONFIG": str(tmp_path / "serving.yaml"), "LOG_PATH": str(tmp_path / "log")}
    out = io.BytesIO()
    Image.new("RGB", (28, 28), "white").save(out, "PNG")
    file = [("images", ("d.png", out.getvalue(), "image/png"))]
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        host, port = url.removeprefix("http://").split(":")
        with httpx.Client(timeout=30) as client, socket.create_connection((host, int(port)), timeout=60) as upload:
            assert client.post(f"{url}/classify", files=file).headers.get("connection") != "close"  # kept alive
            upload.sendall(f"POST /classify HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Type: "
                           "multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n".encode())  # fmt: skip
            assert upload.recv(1024).startswith(b"HTTP/1.1 100 "), "the upload's body was never asked for"
            os.killpg(proc.pid, signal.SIGTERM)
            _until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 503, 30, "/readyz answered no 503")
            answers = [client.post(f"{url}/classify", files=file) for _ in range(5)]  # a new connection each
            assert proc.poll() is None  # the upload is still in flight: the drain goes on
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        assert all(a.headers["connection"] == "close" for a in answers)
        proc.wait(60)  # the upload's client left: a second with no request in flight ends the drain, then the server
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


OVERLOADED = SERVING.replace("max_latency_ms: 5000", "max_latency_ms: 1, max_wait_ms: 50")
TIMEOUT_S = 2  # the request timeout this server runs with (BentoML's config override of traffic.timeout), under
# connections.body_timeout_s (3), so that the stalled upload below meets the request timeout first


def _stalled_upload(url: str) -> tuple[int, dict]:
    """A /classify request whose body stops half-way and never resumes: only a timeout (the body's, or the request's)
    can answer it.
    Returns (status, JSON body). The socket's own timeout only guards against a server that never answers."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, rest = answer.split(b"\r\n", 1)
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


def _together(url: str, bodies: list[bytes]) -> list[tuple[int, bytes, dict]]:
    """(status, headers, JSON body) of a multipart request for /classify (boundary b) for each body, all completed at
    once: each on its own connection, sent but for its body's last byte, then every last byte in one go."""
    host, port = url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=60) for _ in bodies]
    try:
        for sock, body in zip(socks, bodies, strict=True):
            head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
            sock.sendall(head + body[:-1])
        for sock, body in zip(socks, bodies, strict=True):
            sock.sendall(body[-1:])
        answers = []
        for sock in socks:
            answer = _answer(sock)
            headers, payload = answer.split(b"\r\n\r\n", 1)
            answers.append((int(headers.split()[1]), headers, json.loads(payload)))
        return answers
    finally:
        for sock in socks:
            sock.close()


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30  # no length: read until the server closes


def test_overload_and_timeout_answer_503_and_504_as_documented(store, png, tmp_path):
    """Through a real `bentoml serve`: requests that waited past batching.max_latency_ms (1 ms here, while a
    free model waits up to 50 ms for requests still decoding) are refused with 503, and a request the server
    cannot finish (its upload stalls) gets 504 after the request timeout. Both bodies must fit what the served
    /docs.json declares for the route.

    A request of four 1000x1000 images and 15 of one 32x32 digit arrive together (each sent on its own connection
    but for its body's last byte, then every last byte in one go): the digits are queued while the large images
    still decode, and the model waits for those, past 1 ms. (Sent from 16 client threads, requests could arrive one
    after another on an idle machine and all be answered 200.) No duration is asserted."""
    (tmp_path / "serving.yaml").write_text(OVERLOADED)
    env = {**store, "SERVING_CONFIG": str(tmp_path / "serving.yaml"), "LOG_PATH": str(tmp_path / "log"),
           "BENTOML_CONFIG_OPTIONS": f"services.classifier.traffic.timeout={TIMEOUT_S}"}  # fmt: skip
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        document = httpx.get(f"{url}/docs.json", timeout=30).json()
        pixels = np.add.outer(np.arange(1000), np.arange(1000)).astype(np.uint8)
        large = io.BytesIO()
        Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(large, "PNG")
        bodies = [_multipart([("images", f"{i}.png", large.getvalue()) for i in range(4)])]
        answers = _together(url, bodies + [_multipart([("images", "digit.png", png)])] * 15)[1:]
        statuses = sorted({status for status, _, _ in answers})
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        _, headers, overloaded = next(answer for answer in answers if answer[0] == 503)
        assert "(batching.max_latency_ms)" in overloaded["error"], overloaded
        assert b"retry-after: 1\r\n" in headers.lower(), headers
        status, timed_out = _stalled_upload(url)
        assert status == 504, (status, timed_out)
        assert f"in {TIMEOUT_S} seconds" in timed_out["error"] or str(TIMEOUT_S) in timed_out["error"], timed_out
    responses = document["paths"]["/classify"]["post"]["responses"]
    for code, body in ((503, overloaded), (504, timed_out)):
        schema = responses[str(code)]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": document["components"]})
