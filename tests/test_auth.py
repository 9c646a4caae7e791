"""API keys (service/http/keys.py) through a real server, and the page at / with every file it loads.

One real `bentoml serve` with `auth: {api_keys_file, protect_metrics: true}` (docs left open) serving a tiny graph
(tests/tiny_onnx.py) from a temporary model store: no key, a wrong key and the right one in both headers, the open
and the closed routes (BentoML's own among them), the project's client with `key=`, the keys file swapped as
Kubernetes swaps a Secret, and the server log searched for every key sent. The tests run in file order on the one
server; the last reads its log. Every route's refusals without a server: tests/test_app.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service import config as serving_config
from service.client import Client, Refused
from service.http.keys import Keys, KeysError, presented, read_keys
from service.http.page import ASSETS
from tests.conftest import ROOT
from tests.stores import serving_home
from tests.test_app import outside
from tests.test_service import BENTOML, free_port, serving
from tests.tiny_onnx import tiny_graph

KEYS = ["k1-" + "a" * 40, "k2-" + "b" * 40]
NEW_KEY = "k3-" + "c" * 40
WRONG = "wrong-" + "d" * 40
SERVING = """
device: cpu
models: [tiny]
ensembles:
  default: {members: [tiny], voting: soft}
limits: {max_image_bytes: 100000}
auth: {api_keys_file: KEYS_FILE, protect_metrics: true}
"""


def _secret(folder: Path, name: str, text: str) -> None:
    """Point folder/keys at a new file the way the kubelet updates a mounted Secret: the file is written in a new
    directory and the `..data` symlink swapped to it at once (folder/keys -> ..data/keys)."""
    (folder / name).mkdir()
    (folder / name / "keys").write_text(text)
    (folder / "..data.new").symlink_to(name)
    os.replace(folder / "..data.new", folder / "..data")
    if not (folder / "keys").is_symlink():
        (folder / "keys").symlink_to(Path("..data") / "keys")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("bentoml")
    secret = home / "secret"
    secret.mkdir()
    _secret(secret, "..v1", f"# the service's keys\n\n{KEYS[0]}\n  {KEYS[1]}  \n")
    serving = SERVING.replace("KEYS_FILE", str(secret / "keys"))
    return {**serving_home(home, serving, ("tiny", tiny_graph(home / "tiny.onnx"))), "SECRET": str(secret)}


@pytest.fixture(scope="module")
def server(env):
    with serving([], env, wait=120) as (url, proc):
        assert proc.poll() is None, Path(env["LOG_PATH"]).read_text()[-4000:]
        yield url


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


def _classify(url: str, png: Path, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/classify", files=[("images", ("a.png", png.read_bytes(), "image/png"))],
                      headers=headers or {}, timeout=60)  # fmt: skip


def _refused(response: httpx.Response, challenge: str = 'Bearer realm="classifier"') -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith(challenge)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "Authorization: Bearer KEY" in body["error"] and "X-API-Key" in body["error"]
    return body["error"]


@pytest.mark.slow
def test_every_classification_route_needs_a_key(server, png):
    assert _refused(_classify(server, png)).startswith("no API key")
    for headers in ({"Authorization": f"Bearer {WRONG}"}, {"X-API-Key": WRONG}, {"Authorization": f"Basic {KEYS[0]}"}):
        message = _refused(_classify(server, png, headers), 'Bearer realm="classifier"')
        assert WRONG not in message and KEYS[0] not in message  # a key sent is never echoed
    assert _refused(_classify(server, png, {"X-API-Key": WRONG}), 'Bearer realm="classifier", error="invalid_token"')
    for route in ("/ensemble", "/models", "/classify/", "/no-such-route"):  # closed by default, not by a list
        _refused(httpx.post(f"{server}{route}", timeout=30))
    # refused from the headers alone: an upload 20 times the byte limit (a 413 once read) gets the 401
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    _refused(httpx.post(f"{server}/classify", files=[("images", ("big.bmp", big.tobytes(), "image/bmp"))], timeout=60))

    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"authorization": f"bearer {KEYS[1]}"},
                    {"X-API-Key": KEYS[1]}, {"X-API-Key": WRONG, "Authorization": f"Bearer {KEYS[0]}"}):  # fmt: skip
        answer = _classify(server, png, headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model"] == "tiny"
    key = {"X-API-Key": KEYS[0]}
    ensemble = httpx.post(f"{server}/ensemble", files=[("images", ("a.png", png.read_bytes(), "image/png"))],
                          headers=key, timeout=60)  # fmt: skip
    assert ensemble.status_code == 200 and ensemble.json()[0]["members"][0]["model"] == "tiny"
    assert httpx.post(f"{server}/models", headers=key, timeout=30).json()["default_model"] == "tiny"


@pytest.mark.slow
def test_a_refused_body_goes_with_its_connection(server):
    """A 401 is answered before the body is read; the server then closes the connection rather than wait, for ever,
    for the rest of a body the client said was 1,000,000 bytes (or read it as the next request)."""
    import socket

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n"
                     b"\r\n" + b"x" * 100)  # fmt: skip
        answer, closed = b"", False
        while not closed and len(answer) < 100_000:  # until the server closes it (the socket's 30 s timeout fails)
            try:
                chunk = sock.recv(65536)
                closed = not chunk
                answer += chunk
                sock.sendall(b"y")  # the client keeps sending its body: the connection closes all the same
            except (ConnectionResetError, BrokenPipeError):  # closed while the client was still sending
                closed = True
    assert closed and answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower(), answer[:300]


@pytest.mark.slow
def test_health_is_open_metrics_closed_and_docs_open_as_configured(server):
    for path in ("/livez", "/healthz", "/readyz", "/", "/docs.json", "/schema.json", "/static_content/index.css"):
        assert httpx.get(f"{server}{path}", timeout=30).status_code == 200, path
    _refused(httpx.get(f"{server}/metrics", timeout=30))
    metrics = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=30)
    assert metrics.status_code == 200 and "model_requests" in metrics.text


@pytest.mark.slow
def test_the_openapi_document_declares_the_keys_and_the_401(server):
    spec = httpx.get(f"{server}/docs.json", timeout=30).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for route, method in (("/classify", "post"), ("/ensemble", "post"), ("/models", "post"), ("/models", "get")):
        operation = spec["paths"][route][method]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    assert "security" not in spec["paths"]["/livez"]["get"]


@pytest.mark.slow
def test_the_client_sends_its_key(server, png):
    with Client(server, key=KEYS[1]) as client:
        one = client.classify([png], top_k=2)  # one image: the whole body
        assert one[0]["model"] == "tiny" and len(one[0]["top_k"]) == 2
        two = client.classify([png, png.read_bytes()], top_k=2)  # several: one multipart request
        assert two == one * 2
        assert client.ensemble([png], voting="hard")[0]["voting"] == "hard"
        assert set(client.models()["models"]) == {"tiny"}
        with pytest.raises(Refused, match="top_k must be at least 1") as refused:
            client.classify([png], top_k=0)
        assert refused.value.status == 400
    with Client(server) as client, pytest.raises(Refused, match="no API key") as refused:  # no key: the 401
        client.models()
    assert refused.value.status == 401


@pytest.mark.slow
def test_the_page_at_the_root_loads_nothing_from_outside_and_everything_it_names(server):
    page = httpx.get(f"{server}/", timeout=30).text  # the service's page, not BentoML's (the mount comes first)
    assert "swagger-ui" in page and "googletagmanager" not in page.lower() and "validatorUrl: null" in page
    assert outside(page) == []
    for name in ASSETS:  # BentoML serves Swagger UI's files
        assert httpx.get(f"{server}/static_content/{name}", timeout=30).status_code == 200, name


def _eventually(check, seconds: float = 30) -> None:
    """Wait for a change made outside the server to show in its answers (the file is read on the next request;
    a request already on its way may still have the old keys)."""
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert check()


@pytest.mark.slow
def test_a_changed_keys_file_is_read_again(server, env, png):
    secret = Path(env["SECRET"])
    _secret(secret, "..v2", f"{NEW_KEY}\n")  # a key rotated in the Secret
    _eventually(lambda: _classify(server, png, {"X-API-Key": NEW_KEY}).status_code == 200)
    assert _classify(server, png, {"X-API-Key": KEYS[0]}).status_code == 401
    _secret(secret, "..v3", "# every key revoked\n")  # a file without keys lets nobody in
    _eventually(lambda: _classify(server, png, {"X-API-Key": NEW_KEY}).status_code == 401)
    _secret(secret, "..v4", f"{KEYS[0]}\n")
    _eventually(lambda: _classify(server, png, {"X-API-Key": KEYS[0]}).status_code == 200)


@pytest.mark.slow
def test_no_key_is_ever_logged(server, env):
    """Last of the module: every key the tests sent, right or wrong, is absent from the server's whole log."""
    log = Path(env["LOG_PATH"]).read_text()
    assert "path=/classify" in log and "status=401" in log and "holds no key" in log  # the log is the server's
    for key in [*KEYS, NEW_KEY, WRONG]:
        assert key not in log and key[:12] not in log


@pytest.mark.slow
def test_a_keys_file_that_cannot_be_used_stops_bentoml_serve(env, tmp_path):
    for name, text, message in [("missing", None, "does not exist"), ("empty", "# no key yet\n\n", "holds no key")]:
        keys = tmp_path / name
        if text is not None:
            keys.write_text(text)
        config = tmp_path / f"{name}.yaml"
        config.write_text(SERVING.replace("KEYS_FILE", str(keys)))
        command = [BENTOML, "serve", "--port", str(free_port()), "--host", "127.0.0.1"]
        result = subprocess.run(command, cwd=ROOT, env={**env, "SERVING_CONFIG": str(config)}, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: serving config: auth.api_keys_file {keys} {message}; write one API key a line there"
        ]


def test_keys_file_lines_and_headers():
    assert presented([(b"authorization", b"Bearer  abc "), (b"x-api-key", b" def"), (b"host", b"x")]) == [
        b"abc",
        b"def",
    ]
    assert presented([(b"authorization", b"Basic abc"), (b"authorization", b"Bearer"), (b"x-api-key", b" ")]) == []


def test_keys_are_read_from_lines_and_reread_on_change(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\n\n one \r\ntwo\n#three\n")
    assert read_keys(path) == ["one", "two"]
    keys = Keys(path)
    assert keys.accepts([b"two"]) and keys.accepts([b"nope", b"one"]) and not keys.accepts([b"#three", b"on"])
    path.write_text("three\n")
    os.utime(path, ns=(0, 10**9))  # another mtime even on a file system with coarse timestamps
    assert keys.accepts([b"three"]) and not keys.accepts([b"one"])
    path.unlink()
    assert not keys.accepts([b"three"])  # a file gone lets nobody in
    path.write_bytes(b"\xff\xfe not text\n")
    with pytest.raises(KeysError, match="cannot be read"):
        read_keys(path)


def test_keys_are_compared_in_constant_time_against_every_key(tmp_path, monkeypatch):
    """Every presented key is compared with every key of the file, as SHA-256 digests, through hmac.compare_digest:
    neither an early exit nor the length of a guess shows in the time taken (docs/serving.md, 'API keys')."""
    import hmac
    from types import SimpleNamespace

    from service.http import keys as keys_module

    compared: list[tuple[int, int]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(keys_module, "hmac", SimpleNamespace(compare_digest=compare_digest))
    path = tmp_path / "keys"
    path.write_text("k\n" + "m" * 20 + "\n" + "l" * 300 + "\n")
    keys = Keys(path)
    for presented_keys, accepted in [([b"x"], False), ([b"k"], True), ([b"x" * 1000, b"m" * 20], True)]:
        compared.clear()
        assert keys.accepts(presented_keys) is accepted
        # one comparison a presented key and a key of the file, the first key's match included, of 32 bytes each
        assert compared == [(32, 32)] * 3 * len(presented_keys), presented_keys


def test_the_auth_section_is_checked():
    base = {"models": ["tiny"]}
    assert serving_config.parse(base).auth is None
    auth = serving_config.parse({**base, "auth": {"api_keys_file": "/run/keys"}}).auth
    assert (auth.api_keys_file, auth.protect_metrics, auth.protect_docs) == ("/run/keys", False, False)
    for auth, message in [
        (None, "auth must be a mapping of api_keys_file, protect_metrics, protect_docs, got None"),
        ({}, "auth.api_keys_file is missing: it must be the path of a file of API keys"),
        (
            {"api_keys_file": "k", "protect": True},
            "key 'auth.protect': did you mean auth.protect_docs or auth.protect_metrics",
        ),
        ({"api_keys_file": "k", "protect_docs": "yes"}, "auth.protect_docs must be true or false, got 'yes'"),
    ]:
        with pytest.raises(serving_config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            serving_config.parse({**base, "auth": auth})
