"""Malformed requests against a real `bentoml serve`: each gets a 4xx in the service's own error body that names the
field and what to send, no request makes the server open a connection (with and without uvloop importable),
BentoML's own HTTP clients work on every route, and every answer, good or bad, fits the OpenAPI document.

One small digits model (a one-epoch fit: answers, not accuracy, are under test) in a temporary model store.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bentoml
import httpx
import jsonschema
import pytest
from PIL import Image

from tests.conftest import ROOT, quick_config
from tests.test_service import serving
from training.fit import fit

pytestmark = pytest.mark.slow

SERVING = """
device: cpu
default_model: digits-small
models: [digits-small]
ensembles:
  default: {members: [digits-small], voting: soft}
batching: {max_batch_size: 16, max_latency_ms: 5000}
limits: {max_images_per_request: 4, max_image_bytes: 100000, max_image_pixels: 1000000}
connections: {header_timeout_s: 2, drain_s: 20}
"""
HINT = "curl -F images=@digit.png"
ANSWERS: list[
    tuple[str, httpx.Response]
] = []  # (route, response) of every request the module made, for the schema test
NOT_A_FILE = "field 'images' must be image files sent as multipart file parts"


@pytest.fixture(scope="module")
def store(digits_root, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    fit(quick_config(digits_root), home / "run", show=False)
    result = subprocess.run([sys.executable, "-m", "export", str(home / "run" / "best.pt"), "--out",
                             str(home / "small.onnx"), "--store", "digits-small", "--verify-images", "16"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (home / "serving.yaml").write_text(SERVING)
    return {**env, "SERVING_CONFIG": str(home / "serving.yaml"), "LOG_PATH": str(home / "serve.log")}


def _python_path(env: dict, folder: Path) -> dict:
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def without_uvloop(tmp_path_factory) -> Path:
    """A folder whose `uvloop` fails to import, put first on the server's path: uvloop is not importable there
    whatever the venv holds."""
    folder = tmp_path_factory.mktemp("no-uvloop")
    (folder / "uvloop").mkdir()
    (folder / "uvloop" / "__init__.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    return folder


@pytest.fixture(scope="module")
def with_uvloop(tmp_path_factory) -> Path:
    """uvloop from the package registry into a throwaway folder (the venv does not carry it: it would change the
    event loop every benchmark measures)."""
    folder = tmp_path_factory.mktemp("uvloop")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), "uvloop"]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"cannot install uvloop for this test: {result.stderr[-2000:]}"
    return folder


@pytest.fixture(scope="module")
def server(store, without_uvloop):
    env = _python_path(store, without_uvloop)
    with serving([], env) as (url, proc):
        assert proc.poll() is None, Path(store["LOG_PATH"]).read_text()[-4000:]
        yield url


@pytest.fixture(scope="module")
def png(digits_root) -> bytes:
    return next((digits_root / "test" / "3").glob("*.png")).read_bytes()


class Listener:
    """A local HTTP server that answers every GET with a real PNG and counts the connections it accepted."""

    def __init__(self, png: bytes):
        self.connections = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                listener.connections += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def error_of(response: httpx.Response) -> str:
    """The service's error body: exactly {"error": message}."""
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), response.text
    return body["error"]


def url_requests(server: str, route: str, urls: list[str], png: bytes) -> list[tuple[str, dict]]:
    """Every way a client can put a URL where an image belongs, as httpx.post keyword arguments."""
    out = []
    for url in urls:
        out += [
            ("plain form field", {"files": [("images", (None, url))]}),  # curl -F images=URL / --form-string
            ("text part with a filename", {"files": [("images", ("x.png", url.encode(), "text/uri-list"))]}),
            ("URL-encoded body", {"data": {"images": url}}),  # curl -d images=URL
            ("JSON body", {"json": {"images": [url]}}),
            ("JSON body, one string", {"json": {"images": url}}),
            ("JSON string body", {"content": json.dumps(url), "headers": {"content-type": "application/json"}}),
            ("text body", {"content": url, "headers": {"content-type": "text/plain"}}),
            (
                "several parts",
                {"files": [("images", ("a.png", png, "image/png")), ("images", (None, url)), ("images", (None, url))]},
            ),  # fmt: skip
            ("under another name", {"files": [("images", ("a.png", png, "image/png")), ("image", (None, url))]}),
        ]
    return [(f"{route}: {what}", kwargs) for what, kwargs in out]


def assert_no_fetch(server: str, png: bytes) -> None:
    listener = Listener(png)
    try:
        urls = [f"http://127.0.0.1:{listener.port}/digit.png", f"http://localhost:{listener.port}/digit.png"]
        for route in ("classify", "ensemble"):
            for what, kwargs in url_requests(server, route, urls, png):
                response = httpx.post(f"{server}/{route}", timeout=30, **kwargs)
                assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
                message = error_of(response)
                assert "images" in message or "image" in message, (what, message)
        assert listener.connections == 0, f"the server opened {listener.connections} connections to a client's URL"
        # the listener really answers: had the server fetched, it would have got a digit
        assert httpx.get(urls[0], timeout=10).status_code == 200 and listener.connections == 1
    finally:
        listener.close()


def test_no_request_makes_the_server_fetch_a_url(server, png):
    assert_no_fetch(server, png)


def test_no_request_makes_the_server_fetch_a_url_with_uvloop(store, with_uvloop, png, tmp_path):
    """With uvloop importable BentoML's URL download works (its guard blocks only private IP literals)."""
    env = _python_path({**store, "LOG_PATH": str(tmp_path / "log")}, with_uvloop)
    check = subprocess.run([sys.executable, "-c", "import uvloop"], env=env, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        assert_no_fetch(url, png)


def test_malformed_requests_get_a_4xx_that_says_what_to_send(server, png, store):
    file = ("images", ("digit.png", png, "image/png"))
    cases = [
        # (route, httpx.post keyword arguments, status, what the message says)
        ("classify", {"files": [("image", ("digit.png", png, "image/png"))]}, 400,
         ["unknown field 'image'", "file parts named 'images'", HINT, "/classify accepts 'images', 'top_k', 'model'"]),
        ("ensemble", {"files": [("image", ("digit.png", png, "image/png"))]}, 400,
         ["unknown field 'image'", "/ensemble accepts 'images', 'ensemble', 'voting', 'top_k'"]),
        ("classify", {"files": [("images", (None, png))]}, 400, [NOT_A_FILE, HINT]),  # -F "images=<digit.png"
        ("classify", {"files": [("images", (None, "data/digits/test/3/1110.png"))]}, 400, [NOT_A_FILE, "'@'"]),
        ("classify", {"data": {"images": "@digit.png"}}, 400, [NOT_A_FILE, "curl -d"]),  # curl -d images=@digit.png
        ("classify", {"files": [file], "data": {"top_k": "abc"}}, 400,
         ["field 'top_k' must be a whole number, got 'abc'"]),
        ("classify", {"files": [file], "data": {"top_k": "2.5"}}, 400, ["field 'top_k' must be a whole number"]),
        ("classify", {"files": [file], "data": {"topk": "2"}}, 400,
         ["unknown field 'topk'", "/classify accepts 'images', 'top_k', 'model'"]),
        ("ensemble", {"files": [file], "data": {"top-k": "2", "votin": "hard"}}, 400,
         ["unknown fields 'top-k', 'votin'", "/ensemble accepts"]),
        ("classify", {"files": [file, ("top_k", ("k.txt", b"2", "text/plain"))]}, 400,
         ["field 'top_k' is a file part"]),
        ("classify", {"files": [file, ("top_k", (None, "1")), ("top_k", (None, "2"))]}, 400,
         ["field 'top_k' was sent 2 times"]),
        ("classify", {"data": {"top_k": "3"}}, 400, ["no images", HINT]),
        ("classify", {"json": {"top_k": 3}}, 400, ["no images", HINT]),
        ("classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         ["the body is not valid JSON"]),
        ("classify", {"content": png, "headers": {"content-type": "image/png"}}, 415,
         ["unsupported body type 'image/png'", HINT]),
        ("classify", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400,
         ["the body is not valid multipart/form-data"]),
        ("models", {"files": [("topk", (None, "2"))]}, 400, ["unknown field 'topk'", "/models takes no fields"]),
        ("models", {"json": {"model": "x"}}, 400, ["unknown field 'model'"]),
        ("classify", {"files": [file], "data": {"top_k": "0"}}, 400, ["top_k must be at least 1"]),
        ("classify", {"files": [file], "data": {"model": "nope"}}, 404, ["unknown model 'nope'"]),
        ("ensemble", {"files": [file], "data": {"ensemble": "nope"}}, 404, ["unknown ensemble 'nope'"]),
        ("ensemble", {"files": [file], "data": {"voting": "weighted"}}, 400, ["has no weights"]),
        ("classify", {"files": [file] * 5}, 413, ["5 images; the limit is 4"]),
        ("classify", {"files": [("images", ("big.png", b"\0" * 100_001, "image/png"))]}, 413,
         ["image 0 is 100001 bytes"]),
        ("classify", {"files": [("images", ("x.png", b"not an image", "image/png"))]}, 415,
         ["image 0 is not an image"]),
    ]  # fmt: skip
    for route, kwargs, status, parts in cases:
        response = httpx.post(f"{server}/{route}", timeout=30, **kwargs)
        ANSWERS.append((f"/{route}", response))
        assert response.status_code == status, (route, kwargs.keys(), response.status_code, response.text)
        message = error_of(response)
        for part in parts:
            assert part in message, (part, message)
    # good requests still answer, through the same parser
    ok = httpx.post(f"{server}/classify", files=[file], data={"top_k": "2", "model": '"digits-small"'}, timeout=30)
    ANSWERS.append(("/classify", ok))
    assert ok.status_code == 200 and len(ok.json()[0]["top_k"]) == 2, ok.text
    assert httpx.post(f"{server}/models", timeout=30).status_code == 200
    assert httpx.post(f"{server}/models", data={}, timeout=30).status_code == 200  # curl -X POST -d ''
    # a refusal is at most one line in the server's log (the access line), never an ERROR with a traceback
    log = Path(store["LOG_PATH"]).read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-4000:]


def test_bentoml_clients_call_every_route(server, digits_root):
    paths = [next((digits_root / "test" / str(d)).glob("*.png")) for d in (3, 7)]
    with bentoml.SyncHTTPClient(server) as client:
        answers = client.classify(images=paths, top_k=2)
        assert len(answers) == 2 and all(len(a["top_k"]) == 2 and a["model"] == "digits-small" for a in answers)
        assert client.classify(images=[paths[0]], model="digits-small")[0]["label"] == answers[0]["label"]
        voted = client.ensemble(images=paths, voting="hard", top_k=1)
        assert [v["voting"] for v in voted] == ["hard", "hard"] and len(voted[0]["members"]) == 1
        assert set(client.list_models()["models"]) == {"digits-small"}
        with pytest.raises(bentoml.exceptions.BentoMLException, match="top_k must be at least 1"):
            client.classify(images=[paths[0]], top_k=0)

    async def call() -> None:
        async with bentoml.AsyncHTTPClient(server) as client:
            answers = await client.classify(images=paths, top_k=3)
            assert len(answers) == 2 and all(len(a["top_k"]) == 3 for a in answers)
            voted = await client.ensemble(images=[paths[1]], ensemble="default")
            assert voted[0]["voting"] == "soft"
            assert (await client.list_models())["default_model"] == "digits-small"

    asyncio.run(call())


def test_every_answer_fits_the_openapi_document(server, png):
    """/docs.json lists, for each route, exactly the statuses the service answers, each with the body it sends:
    every response above (good and bad) and more below must be documented for its route and fit that schema."""
    document = httpx.get(f"{server}/docs.json", timeout=30).json()
    file = ("images", ("digit.png", png, "image/png"))
    more = [
        ("/classify", {"files": [file, file]}),
        ("/ensemble", {"files": [file], "data": {"voting": "hard", "top_k": "3"}}),
        ("/models", {}),
        ("/models", {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        ("/models", {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("/models", {"content": b" " * (1024 * 1024 + 1), "headers": {"content-type": "application/json"}}),
        ("/ensemble", {"files": [("images", ("x.gif", b"GIF89a", "image/gif"))]}),
        ("/ensemble", {"files": [file] * 5}),
        ("/ensemble", {"files": [file], "data": {"ensemble": "nope"}}),
        ("/ensemble", {"files": [file], "data": {"top_k": "x"}}),
        ("/classify", {"files": [file], "data": {"model": "nope"}}),
        ("/classify", {"files": [("image", ("digit.png", png, "image/png"))]}),
        ("/classify", {"files": [file] * 5}),
        ("/classify", {"files": [("images", ("x.txt", b"text", "text/plain"))]}),
    ]
    # with the answers of the tests above when they ran first (this test does not need them)
    answers = ANSWERS + [(route, httpx.post(f"{server}{route}", timeout=30, **kw)) for route, kw in more]
    seen: dict[str, set[int]] = {}
    for route, response in answers:
        responses = document["paths"][route]["post"]["responses"]
        assert str(response.status_code) in responses, (route, response.status_code, sorted(responses))
        schema = responses[str(response.status_code)]["content"]["application/json"]["schema"]
        # the document's own components resolve the schema's references
        jsonschema.validate(response.json(), {**schema, "components": document["components"]})
        seen.setdefault(route, set()).add(response.status_code)
    # what the document declares is what the routes answer: each status seen here, and the ones a test cannot
    # cause cheaply (500: a bug; 503: overload; 504: the 60-s timeout) send the same documented error body
    for route in ("/classify", "/ensemble", "/models"):
        documented = {int(s) for s in document["paths"][route]["post"]["responses"]}
        assert documented - seen[route] <= {500, 503, 504}, (route, documented, seen[route])
    # (503 and 504 are produced and checked against the document by test_overload_and_timeout_answer_503_and_504)
    error = {"$ref": "#/components/schemas/Error", "components": document["components"]}
    with pytest.raises(jsonschema.ValidationError):  # BentoML's own error bodies do not fit it
        jsonschema.validate({"error": "1 validation error", "detail": [{"loc": ["top_k"]}]}, error)
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(document["components"]["schemas"])


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


def test_bodies_are_bounded_and_no_client_gets_a_500(server, png, store):
    """Each body a hostile client can send is refused in the service's error body, never with a 500 or a traceback:
    a declared length over the bound (before any of it is read), a chunked body past it, a JSON body over
    max_json_bytes, JSON and form values nested 1,000 deep, BentoML's pickle body type, another method than POST,
    and a client that hangs up in the middle of its body."""
    file = ("images", ("digit.png", png, "image/png"))
    bound = 4 * 100_000 + 1024 * 1024  # the SERVING limits: 4 images of 100,000 bytes, and 1 MiB for the rest
    # a Content-Length over the bound: answered from the headers, though not one byte of the body was sent
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {bound + 1}\r\n\r\n").encode()  # fmt: skip
    answer = _raw(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert f"the body is {bound + 1} bytes; the limit is {bound}".encode() in answer, answer
    # the same body sent chunked (no length): counted as it streams
    part = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunks = iter([part, *(b"x" * 65536 for _ in range(bound // 65536 + 2))])
    streamed = httpx.post(f"{server}/classify", content=chunks, timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip
    assert streamed.status_code == 413 and f"over {bound} bytes" in error_of(streamed), streamed.text
    big_json = json.dumps({"model": "x" * (1024 * 1024)})
    refused = httpx.post(f"{server}/models", content=big_json, headers={"content-type": "application/json"})
    assert refused.status_code == 413 and "limit is 1048576" in error_of(refused), refused.text
    deep = "[" * 1000 + "]" * 1000
    cases = [
        ({"content": f'{{"top_k": {deep}}}', "headers": {"content-type": "application/json"}}, 400,
         "the JSON body nests 1001 levels deep; the limit is 32"),
        ({"files": [file], "data": {"top_k": deep}}, 400, "a form value nests 1000 levels deep"),
        ({"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 415,
         "unsupported body type 'application/vnd.bentoml+pickle'"),
    ]  # fmt: skip
    for kwargs, status, part in cases:
        response = httpx.post(f"{server}/classify", timeout=30, **kwargs)
        assert response.status_code == status and part in error_of(response), (part, response.text)
    for route in ("classify", "ensemble", "models"):
        got = httpx.get(f"{server}/{route}", timeout=30)
        assert got.status_code == 405 and got.headers["allow"] == "POST", got.headers
        assert error_of(got) == f"/{route} takes POST, not GET"
    # a client that leaves after 100 of 10,000 bytes of its JSON body
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    _raw(server, head, b'{"top_k": ' + b" " * 90, close_after=True)
    ok = httpx.post(f"{server}/classify", files=[file], timeout=30)
    assert ok.status_code == 200, ok.text
    # four 661-byte PNGs of 200,000 x 1 pixels (each once resized whole to 6,400,000 x 32): answered
    out = io.BytesIO()
    Image.new("RGB", (200_000, 1)).save(out, "PNG")
    thin = httpx.post(f"{server}/classify", files=[("images", ("t.png", out.getvalue(), "image/png"))] * 4, timeout=60)
    assert thin.status_code == 200 and len(thin.json()) == 4, thin.text
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


def test_sigterm_drains_instead_of_resetting_kept_alive_connections(store, tmp_path):
    """On SIGTERM /readyz answers 503 at once, kept-alive connections keep being answered, each answer with
    Connection: close, and the server exits once no request has come for a second."""
    env = {**store, "LOG_PATH": str(tmp_path / "log")}
    out = io.BytesIO()
    Image.new("RGB", (28, 28), "white").save(out, "PNG")
    file = [("images", ("d.png", out.getvalue(), "image/png"))]
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        with httpx.Client(timeout=30) as client:  # one kept-alive connection
            assert client.post(f"{url}/classify", files=file).headers.get("connection") != "close"
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
            answers = []
            for _ in range(5):
                answers.append(client.post(f"{url}/classify", files=file))  # a new connection after each close
                time.sleep(0.1)
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        assert all(a.headers["connection"] == "close" for a in answers)
        proc.wait(60)  # quiet for a second: the drain ends, then the server
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


OVERLOADED = SERVING.replace("max_latency_ms: 5000", "max_latency_ms: 1, max_wait_ms: 50")
TIMEOUT_S = 5  # the request timeout this server runs with (BentoML's config override of traffic.timeout)


def _stalled_upload(url: str) -> tuple[int, dict]:
    """A /classify request whose body stops half-way and never resumes: only the request timeout can answer it.
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

    Whether a given request waits past 1 ms depends on when it arrives, so each round sends 16 one-image
    requests at once and the test passes at the first round with a 503 (a loaded machine makes requests
    overlap more, not less); it fails after 5 rounds without one. No duration is asserted."""
    (tmp_path / "serving.yaml").write_text(OVERLOADED)
    env = {**store, "SERVING_CONFIG": str(tmp_path / "serving.yaml"), "LOG_PATH": str(tmp_path / "log"),
           "BENTOML_CONFIG_OPTIONS": f"services.classifier.traffic.timeout={TIMEOUT_S}"}  # fmt: skip
    file = ("images", ("digit.png", png, "image/png"))
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        document = httpx.get(f"{url}/docs.json", timeout=30).json()
        answers = []
        for _ in range(5):
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda _: httpx.post(f"{url}/classify", files=[file], timeout=60), range(16)))
            if any(a.status_code == 503 for a in answers):
                break
        statuses = sorted({a.status_code for a in answers})
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        overloaded = next(a for a in answers if a.status_code == 503)
        assert "(batching.max_latency_ms)" in overloaded.json()["error"], overloaded.text
        status, timed_out = _stalled_upload(url)
        assert status == 504, (status, timed_out)
        assert f"in {TIMEOUT_S} seconds" in timed_out["error"] or str(TIMEOUT_S) in timed_out["error"], timed_out
    responses = document["paths"]["/classify"]["post"]["responses"]
    for code, body in ((503, overloaded.json()), (504, timed_out)):
        schema = responses[str(code)]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": document["components"]})
