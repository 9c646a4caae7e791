"""The HTTP app in-process (service/http/app.py, an ASGI client, no server): every answer and refusal, body bounds,
keys on every route, the decoding budget given back, the OpenAPI document and the page. Torch-free and fast.

Two tiny graphs (tests/tiny_onnx.py: softmax(mean colour @ W + b), W and b drawn from a seed) are the models, so
the expected probabilities of a one-colour image are worked out with numpy (`tiny_probabilities`), not with the
service's code.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import warnings

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from service.config import loads
from service.decode import quoted
from service.engine import Engine
from service.http import app as http_app
from service.http.keys import Keys, KeysMiddleware
from service.http.page import ASSETS
from service.runtime import Graph
from tests.tiny_onnx import tiny_graph, tiny_probabilities

with warnings.catch_warnings():  # Starlette's test client says it will move off httpx one day
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SERVING = """
models: [a, b]
ensembles:
  default: {members: [a, b]}
  hard: {members: [a, b], voting: hard}
  weighted: {members: [a, b], voting: weighted, weights: [3, 1]}
limits: {max_images_per_request: 4, max_image_bytes: 100000, max_image_pixels: 1000000, max_json_bytes: 4000}
"""
HINT = "curl -F images=@digit.png"
NOT_A_FILE = "field 'images' must be image files sent as multipart file parts"
RED, BLUE = (200, 10, 10), (10, 20, 230)
DEEP = "[" * 1000 + "]" * 1000  # Python's JSON parser recurses: nested this deep, a RecursionError unless refused
# what a page loads by itself: src= of any element, href= of <link>, url() in styles
LOADS = re.compile(
    r"""\bsrc\s*=\s*["']?([^"'\s>]+)|<link\b[^>]*\bhref\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')]+)""", re.I
)
ANSWERS: list[tuple[str, str, httpx.Response]] = []  # (method, route, response) of the module, for the schema test


def encoded(colour: tuple[int, int, int], kind: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, kind)
    return out.getvalue()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return loads(SERVING, "tests/test_app.py")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("graphs")
    return {name: (f"{name}:v1", Graph(tiny_graph(folder / f"{name}.onnx", seed), "cpu", 1))
            for name, seed in (("a", 0), ("b", 1))}  # fmt: skip


@pytest.fixture(scope="module")
def app(config, graphs):
    app = http_app.build(config, "the tests' service")
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.engine = Engine(config, graphs)  # on the client's event loop, as a worker does on its own
        client.engine = app.state.engine
        yield client


def post(client: TestClient, route: str, **kwargs) -> httpx.Response:
    response = client.post(route, **kwargs)
    ANSWERS.append(("post", route.split("?")[0], response))
    return response


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), response.text
    return body["error"]


def test_classify_answers_what_the_graph_computes_for_multipart_and_raw_bodies(app):
    png, jpeg = encoded(RED), encoded(BLUE, "BMP")
    expected = [tiny_probabilities(0, RED), tiny_probabilities(0, BLUE)]
    multipart = post(app, "/classify", files=[("images", ("r.png", png, "image/png")), ("images", ("b.bmp", jpeg))],
                     data={"top_k": "3"})  # fmt: skip
    assert multipart.status_code == 200, multipart.text
    for answer, probabilities in zip(multipart.json(), expected, strict=True):
        order = np.argsort(-probabilities, kind="stable")
        assert answer["model"] == "a" and answer["index"] == order[0] and answer["label"] == str(order[0])
        assert answer["probability"] == pytest.approx(probabilities[order[0]], abs=1e-6)
        assert [p["index"] for p in answer["top_k"]] == list(order[:3])
        assert [p["probability"] for p in answer["top_k"]] == pytest.approx(probabilities[order[:3]], abs=1e-6)
    # one image as the whole body, the fields in the query: the same answer as the same image as a part
    for body, kind, answer in ((png, "image/png", multipart.json()[0]), (jpeg, "application/octet-stream",
                                                                          multipart.json()[1])):  # fmt: skip
        raw = post(app, "/classify?top_k=3&model=a", content=body, headers={"Content-Type": kind})
        assert raw.status_code == 200 and raw.json() == [answer], raw.text
    # the content type is never trusted: a PNG said to be a JPEG is read as the PNG it is
    assert post(app, "/classify?top_k=3", content=png, headers={"Content-Type": "image/jpeg"}).json() == [
        multipart.json()[0]
    ]
    other = post(app, "/classify", content=png, headers={"Content-Type": "image/png"}, params={"model": "b"})
    order = np.argsort(-tiny_probabilities(1, RED), kind="stable")
    assert other.json()[0]["model"] == "b" and other.json()[0]["index"] == order[0]
    assert len(other.json()[0]["top_k"]) == 5  # the default


def test_ensemble_votes_soft_weighted_and_hard(app):
    png = encoded(RED)
    a, b = tiny_probabilities(0, RED), tiny_probabilities(1, RED)
    for ensemble, voting, scores in (("default", "soft", (a + b) / 2), ("weighted", "weighted", (3 * a + b) / 4)):
        answer = post(app, f"/ensemble?ensemble={ensemble}", content=png, headers={"Content-Type": "image/png"})
        [got] = answer.json()
        best = int(np.argmax(scores))
        assert got["voting"] == voting and got["index"] == best
        assert got["probability"] == pytest.approx(scores[best], abs=1e-6)
        assert [m["model"] for m in got["members"]] == ["a", "b"]
        assert [m["index"] for m in got["members"]] == [int(np.argmax(a)), int(np.argmax(b))]
        assert got["agreement"] == (0.5 + 0.5 * (np.argmax(a) == np.argmax(b))) * (1 if np.argmax(a) == best else 1)
    # hard: the majority of top-1 labels, a tie broken by the higher mean probability
    hard = post(app, "/ensemble", files=[("images", ("r.png", png, "image/png"))], data={"voting": "hard"})
    [got] = hard.json()
    votes = (
        {str(int(np.argmax(a))): 1, str(int(np.argmax(b))): 1}
        if np.argmax(a) != np.argmax(b)
        else {str(int(np.argmax(a))): 2}
    )
    assert got["voting"] == "hard" and got["votes"] == votes
    tied = [int(np.argmax(a)), int(np.argmax(b))]
    assert got["index"] == max(tied, key=lambda j: (a[j] + b[j]) / 2)


def test_models_lists_every_model_and_ensemble(app):
    for answer in (app.get("/models"), post(app, "/models"), post(app, "/models", json={})):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["default_model"] == "a" and set(body["models"]) == {"a", "b"}
        assert body["models"]["b"]["tag"] == "b:v1" and body["models"]["a"]["input_size"] == [32, 32]
        assert body["ensembles"]["weighted"] == {"members": ["a", "b"], "voting": "weighted", "weights": [3.0, 1.0]}
    ANSWERS.append(("get", "/models", app.get("/models")))


def test_malformed_requests_get_a_4xx_that_says_what_to_send(app):
    png = encoded(RED)
    file = ("images", ("digit.png", png, "image/png"))
    cases = [
        # (route, keyword arguments of the client's post, status, what the message says)
        ("/classify", {"files": [("image", ("digit.png", png, "image/png"))]}, 400,
         ["unknown field 'image'", "file parts named 'images'", HINT, "/classify accepts 'images', 'top_k', 'model'"]),
        ("/ensemble", {"files": [("image", ("digit.png", png, "image/png"))]}, 400,
         ["unknown field 'image'", "/ensemble accepts 'images', 'ensemble', 'voting', 'top_k'"]),
        ("/classify", {"files": [("images", (None, png))]}, 400, [NOT_A_FILE, HINT]),  # -F "images=<digit.png"
        ("/classify", {"files": [("images", (None, "data/digits/test/3/1110.png"))]}, 400, [NOT_A_FILE, "'@'"]),
        ("/classify", {"data": {"images": "@digit.png"}}, 400, [NOT_A_FILE, "curl -d"]),  # curl -d images=@digit.png
        ("/classify", {"files": [file], "data": {"top_k": "abc"}}, 400,
         ["field 'top_k' must be a whole number, got 'abc'"]),
        ("/classify", {"files": [file], "data": {"top_k": "2.5"}}, 400, ["field 'top_k' must be a whole number"]),
        ("/classify?top_k=true", {"content": png, "headers": {"content-type": "image/png"}}, 400,
         ["field 'top_k' must be a whole number, got 'true'"]),
        ("/classify", {"files": [file], "data": {"topk": "2"}}, 400,
         ["unknown field 'topk'", "/classify accepts 'images', 'top_k', 'model'"]),
        ("/classify?topk=2", {"content": png, "headers": {"content-type": "image/png"}}, 400, ["unknown field 'topk'"]),
        ("/ensemble", {"files": [file], "data": {"top-k": "2", "votin": "hard"}}, 400,
         ["unknown fields 'top-k', 'votin'", "/ensemble accepts"]),
        ("/classify", {"files": [file, ("top_k", ("k.txt", b"2", "text/plain"))]}, 400,
         ["field 'top_k' is a file part"]),
        ("/classify", {"files": [file, ("top_k", (None, "1")), ("top_k", (None, "2"))]}, 400,
         ["field 'top_k' was sent 2 times"]),
        ("/classify?top_k=1&top_k=2", {"files": [file]}, 400, ["field 'top_k' was sent 2 times"]),
        ("/classify?top_k=1", {"files": [file], "data": {"top_k": "2"}}, 400,
         ["field 'top_k' was sent twice (as a query parameter and in the body)"]),
        ("/classify?images=http://x/a.png", {"files": [file]}, 400, [NOT_A_FILE, "not a query parameter"]),
        ("/classify", {"data": {"top_k": "3"}}, 400, ["no images", HINT, "whole body"]),
        ("/classify", {"json": {"top_k": 3}}, 400, ["no images", HINT]),
        ("/classify", {"content": b"", "headers": {"content-type": "image/png"}}, 400, ["image 0 is empty"]),
        ("/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         ["the body is not valid JSON"]),
        ("/classify", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
         ["unsupported body type 'text/plain'", HINT, "--data-binary"]),
        ("/classify", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400,
         ["the body is not valid multipart/form-data"]),
        ("/models", {"files": [("topk", (None, "2"))]}, 400, ["unknown field 'topk'", "/models takes no fields"]),
        ("/models", {"json": {"model": "x"}}, 400, ["unknown field 'model'"]),
        ("/models", {"content": png, "headers": {"content-type": "image/png"}}, 415,
         ["unsupported body type 'image/png'"]),
        ("/classify", {"files": [file], "data": {"top_k": "0"}}, 400, ["top_k must be at least 1"]),
        ("/classify", {"files": [file], "data": {"model": "nope"}}, 404, ["unknown model 'nope'; served models: a, b"]),
        ("/classify", {"files": [file], "data": {"model": "x" * 900_00}}, 404, ["... (90002 characters)"]),
        ("/ensemble", {"files": [file], "data": {"ensemble": "nope"}}, 404, ["unknown ensemble 'nope'"]),
        ("/ensemble", {"files": [file], "data": {"voting": "majority"}}, 400, ["voting must be soft, weighted or"]),
        ("/ensemble", {"files": [file], "data": {"voting": "weighted"}}, 400, ["has no weights"]),
        ("/classify", {"files": [file] * 5}, 413, ["5 images; the limit is 4"]),
        ("/ensemble", {"files": [file] * 5}, 413, ["5 images; the limit is 4"]),
        ("/classify", {"files": [("images", ("big.png", b"\0" * 100_001, "image/png"))]}, 413,
         ["image 0 is 100001 bytes"]),
        ("/classify", {"files": [("images", ("x.png", b"not an image", "image/png"))]}, 415,
         ["image 0 is not an image"]),
        ("/classify", {"files": [file, ("images", ("t.png", png[:60], "image/png"))]}, 400,
         ["image 1 is truncated or corrupt"]),
        ("/classify", {"content": encoded(RED, size=(1001, 1000)), "headers": {"content-type": "image/png"}}, 413,
         ["image 0 is 1001x1000 = 1001000 pixels; the limit is 1000000"]),
        ("/classify", {"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}},
         415, ["unsupported body type 'application/vnd.bentoml+pickle'"]),
        ("/classify", {"content": f'{{"top_k": {DEEP}}}', "headers": {"content-type": "application/json"}}, 400,
         ["the JSON body nests 1001 levels deep; the limit is 32"]),
        ("/classify", {"files": [file], "data": {"model": DEEP}}, 400,
         ["a form value nests 1000 levels deep"]),
    ]  # fmt: skip
    for route, kwargs, status, parts in cases:
        response = post(app, route, **kwargs)
        assert response.status_code == status, (route, kwargs.keys(), response.status_code, response.text)
        message = error_of(response)
        for part in parts:
            assert part in message, (part, message)
    # a text field keeps its text; one sent as JSON text (as BentoML's clients sent it) is read as that text
    for model in ("a", '"a"'):
        ok = post(app, "/classify", files=[file], data={"top_k": "2", "model": model})
        assert ok.status_code == 200 and ok.json()[0]["model"] == "a" and len(ok.json()[0]["top_k"]) == 2, ok.text
    for route in ("/classify", "/ensemble"):
        got = app.get(route)
        ANSWERS.append(("post", route, got))  # documented with the route's POST
        assert got.status_code == 405 and got.headers["allow"] == "POST", got.headers
        assert error_of(got) == f"{route} takes POST, not GET"
    assert set(app.put("/models").headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


@pytest.mark.parametrize(
    "sent", ["true", "1e3", "1_000", " 3", "3 ", "3.0", "+3", "0x10", "\u00b2", "\u0663", "", "1" * 100 + "x"]
)
def test_top_k_is_decimal_digits_however_it_is_sent(app, sent):
    """top_k is a whole number in every way a field can come: decimal digits as text (a multipart field, a query
    parameter, a URL-encoded body, a JSON string), an integer in JSON; anything else is refused with what was sent
    (issue 31: `true`, `1e3` and `1_000` were read as numbers)."""
    png = encoded(RED)
    refusal = f"field 'top_k' must be a whole number, got {quoted(sent)}"
    for route, kwargs in [
        ("/classify", {"files": [("images", ("a.png", png, "image/png"))], "data": {"top_k": sent}}),
        ("/ensemble", {"content": png, "headers": {"content-type": "image/png"}, "params": {"top_k": sent}}),
        ("/classify", {"data": {"top_k": sent}}),  # URL-encoded: the field is refused before the missing images
        ("/classify", {"json": {"top_k": sent}}),
    ]:
        response = post(app, route, **kwargs)
        assert response.status_code == 400 and error_of(response) == refusal, (kwargs.keys(), response.text)


def test_top_k_in_json_is_an_integer_and_digits_are_read_whatever_their_number(app):
    for value, shown in [(True, "true"), (1e3, "1000.0"), (3.0, "3.0"), ([3], "[3]"), ({"k": 3}, '{"k": 3}'),
                         (list(range(100)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 1"
                                            "... (390 characters)")]:  # fmt: skip
        response = post(app, "/classify", json={"top_k": value})
        assert error_of(response) == f"field 'top_k' must be a whole number, got {shown}", response.text
    png = {"content": encoded(RED), "headers": {"content-type": "image/png"}}
    for sent, classes in (("03", 3), ("0" * 5000 + "2", 2), ("9" * 5000, 10)):  # past int()'s 4,300 digits too
        answer = post(app, "/classify", params={"top_k": sent}, **png)
        assert answer.status_code == 200 and len(answer.json()[0]["top_k"]) == classes, answer.text
    below = post(app, "/classify", params={"top_k": "-" + "9" * 5000}, **png)
    assert below.status_code == 400 and error_of(below).startswith("top_k must be at least 1"), below.text


def test_no_request_fetches_a_url(app, monkeypatch):
    """A URL where an image belongs, sent every way a client can, is refused and never opened: every network
    connection this process tries while the requests run fails the test."""
    import socket

    tried: list = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: tried.append(address))
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: tried.append(address))
    png = encoded(RED)
    for url in ("http://127.0.0.1:9/digit.png", "http://localhost:9/digit.png", "file:///etc/passwd"):
        ways = [
            {"files": [("images", (None, url))]},  # curl -F images=URL / --form-string
            {"files": [("images", ("x.png", url.encode(), "text/uri-list"))]},
            {"data": {"images": url}},  # curl -d images=URL
            {"json": {"images": [url]}},
            {"json": {"images": url}},
            {"content": json.dumps(url), "headers": {"content-type": "application/json"}},
            {"content": url, "headers": {"content-type": "text/plain"}},
            {"content": url, "headers": {"content-type": "image/png"}},
            {"params": {"images": url}, "content": png, "headers": {"content-type": "image/png"}},
            {"files": [("images", ("a.png", png, "image/png")), ("images", (None, url))]},
            {"files": [("images", ("a.png", png, "image/png")), ("image", (None, url))]},
        ]
        for route in ("/classify", "/ensemble"):
            for kwargs in ways:
                response = post(app, route, **kwargs)
                assert 400 <= response.status_code < 500, (kwargs, response.status_code, response.text)
                assert "image" in error_of(response), response.text
    assert tried == []


def test_bodies_over_their_bound_are_refused(app):
    bound = 4 * 100_000 + 1024 * 1024  # 4 images of 100,000 bytes, and 1 MiB for the rest
    # a Content-Length over the bound: answered from the headers, and the connection closed after the answer
    declared = post(app, "/classify", content=b"x" * (bound + 1), headers={"content-type": "multipart/form-data"})
    assert declared.status_code == 413 and declared.headers["connection"] == "close"
    assert error_of(declared) == f"the body is {bound + 1} bytes; the limit is {bound} (limits.max_body_bytes)"
    one_image = post(app, "/classify", content=b"x" * 100_001, headers={"content-type": "image/jpeg"})
    assert error_of(one_image) == "the body is 100001 bytes; the limit is 100000 (limits.max_image_bytes)"
    json_body = post(app, "/models", content=b" " * 4001, headers={"content-type": "application/json"})
    assert json_body.status_code == 413 and "(limits.max_json_bytes)" in error_of(json_body)
    # without a length (chunked), counted while it streams
    part = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunks = iter([part, *(b"x" * 65536 for _ in range(bound // 65536 + 2))])
    streamed = post(app, "/classify", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413, streamed.text
    assert error_of(streamed) == f"the body is over {bound} bytes, the limit (limits.max_body_bytes)"
    raw = post(app, "/classify", content=iter([b"x" * 60_000, b"x" * 60_000]), headers={"content-type": "image/png"})
    assert error_of(raw) == "the body is over 100000 bytes, the limit (limits.max_image_bytes)"


def test_too_many_images_are_413_whichever_parser_reads_the_body(app):
    """More image parts than `max_images_per_request` get the 413 of too many images, from the whole-body reader and
    from Starlette's streaming one (a body without a length here), which stopped at its own 1,000 files with a 400
    "Too many files" (issue 31) and now stops spooling at the first part past the limit."""
    for count, streamed_refusal in [
        (5000, (413, "more than 5 file parts; the limit is 4 images a request")),
        (6, (413, "more than 5 file parts; the limit is 4 images a request")),
        (5, (413, "5 images; the limit is 4 a request")),
    ]:
        request = httpx.Request("POST", "http://x/classify", files=[("images", ("a.png", b"x", "image/png"))] * count)
        body, headers = request.read(), {"content-type": request.headers["content-type"]}
        whole = post(app, "/classify", content=body, headers=headers)
        assert whole.status_code == 413 and error_of(whole) == f"{count} images; the limit is 4 a request", whole.text
        streamed = post(app, "/classify", content=iter([body]), headers=headers)  # no length: read as it streams
        assert (streamed.status_code, error_of(streamed)) == streamed_refusal, streamed.text
    # four images and a file part under another name: that part is named, streamed or not
    request = httpx.Request("POST", "http://x/classify", files=[("images", ("a.png", b"x", "image/png"))] * 4
                            + [("image", ("b.png", b"x", "image/png"))])  # fmt: skip
    body, headers = request.read(), {"content-type": request.headers["content-type"]}
    for content in (body, iter([body])):
        misnamed = post(app, "/classify", content=content, headers=headers)
        assert misnamed.status_code == 400 and "unknown field 'image'" in error_of(misnamed), misnamed.text


def test_the_decoding_budget_is_given_back_after_answers_and_refusals(app):
    budget = app.engine.budget
    assert budget.used == 0
    png = encoded(RED, size=(300, 200))
    for kwargs, status in [
        ({"files": [("images", ("a.png", png, "image/png"))] * 3}, 200),
        ({"files": [("images", ("a.png", png, "image/png")), ("images", ("t.png", png[:200], "image/png"))]}, 400),
        ({"content": png[: len(png) // 2], "headers": {"content-type": "image/png"}}, 400),  # truncated
        ({"content": png, "headers": {"content-type": "image/png"}, "params": {"model": "nope"}}, 404),
    ]:
        response = post(app, "/classify", **kwargs)
        assert response.status_code == status, response.text
        assert budget.used == 0, (kwargs.keys(), budget.used)


def test_every_answer_fits_the_openapi_document(app):
    """/docs.json documents, for each route, every status it answers with the body it sends: each answer of this
    module must be documented for its route and fit that schema."""
    document = app.get("/docs.json").json()
    seen: dict[str, set[int]] = {}
    assert len(ANSWERS) > 100, "the tests above ran first (pytest keeps file order)"
    for method, route, response in ANSWERS:
        responses = document["paths"][route][method]["responses"]
        assert str(response.status_code) in responses, (route, response.status_code, sorted(responses))
        schema = responses[str(response.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": document["components"]})
        seen.setdefault(route, set()).add(response.status_code)
    for route in ("/classify", "/ensemble"):
        documented = {int(s) for s in document["paths"][route]["post"]["responses"]}
        # 500: a bug; 503: overload (test_requests.py); 504: the timeout (the same); 408: a body that stops
        # (test_a_body_that_stops_is_answered_408, against this document too)
        assert documented - seen[route] <= {408, 500, 503, 504}, (route, documented, seen[route])
    post_body = document["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(post_body) == {"multipart/form-data", "image/*"}
    assert {p["name"] for p in document["paths"]["/classify"]["post"]["parameters"]} == {"top_k", "model"}


def test_the_document_bounds_the_images_and_top_k(app, config):
    """/docs.json says what the routes refuse: at least one image and at most limits.max_images_per_request (4 here),
    top_k at least 1 (without a maximum: more than a model's classes gives them all)."""
    document = app.get("/docs.json").json()
    for route in ("/classify", "/ensemble"):
        operation = document["paths"][route]["post"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        assert (form["images"]["minItems"], form["images"]["maxItems"]) == (1, config.limits.max_images_per_request)
        [query] = [p["schema"] for p in operation["parameters"] if p["name"] == "top_k"]
        for top_k in (form["top_k"], query):
            assert top_k["type"] == "integer" and top_k["minimum"] == 1 and "maximum" not in top_k, top_k


def test_a_worker_still_starting_answers_503(config):
    with TestClient(http_app.build(config)) as client:
        response = client.post("/classify", content=encoded(RED), headers={"content-type": "image/png"})
        assert response.status_code == 503 and "still loading" in error_of(response)
        assert response.headers["retry-after"] == "1"  # as every 503 the service gives


def outside(html: str) -> list[str]:
    """The URLs on another host that a page loads by itself (src=, <link href=>, url() in styles, addresses in
    scripts); links, which load only when clicked, are not counted."""
    found = [next(g for g in groups if g) for groups in LOADS.findall(html)]
    found += re.findall(r"https?://[^\s\"'<>]+", "".join(re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)))
    return [url for url in found if re.match(r"(?i)(https?:)?//", url)]


def test_the_page_loads_nothing_from_outside(app):
    page = app.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in page.text and "validatorUrl: null" in page.text and 'url: "./docs.json"' in page.text
    assert outside(page.text) == []
    assert outside('<script src="https://www.googletagmanager.com/gtm.js"></script>') != []  # the reader reads
    assert {f"./static_content/{name}" for name in ASSETS} <= set(re.findall(r'(?:src|href)="([^"]+)"', page.text))


@pytest.mark.parametrize("protect", [(False, False), (True, False), (False, True), (True, True)])
def test_keys_guard_every_route_but_health(config, graphs, tmp_path, protect):
    """The keys middleware as the service adds it (outside the app, so BentoML's own routes too: /metrics,
    /schema.json and a page asset here stand for BentoML's), closed by default, /metrics and the docs open unless
    protected."""
    protect_metrics, protect_docs = protect
    keys_file = tmp_path / "keys"
    keys_file.write_text("right-key\n")
    auth = loads(f"models: [a]\nauth: {{api_keys_file: {keys_file}, protect_metrics: {str(protect_metrics).lower()}, "
                 f"protect_docs: {str(protect_docs).lower()}}}\n", "x").auth  # fmt: skip
    inner = http_app.build(config)
    bentoml_like = Starlette(routes=[
        Route("/metrics", lambda r: PlainTextResponse("model_requests 1\n")),
        Route("/readyz", lambda r: PlainTextResponse("\n")),
        Route("/livez", lambda r: PlainTextResponse("\n")),
        Route("/schema.json", lambda r: PlainTextResponse("{}")),
        Route(f"/static_content/{ASSETS[0]}", lambda r: PlainTextResponse("")),
        Mount("/", inner),
    ])  # fmt: skip
    app = KeysMiddleware(bentoml_like, auth=auth, keys=Keys(keys_file))
    png = encoded(RED)
    with TestClient(app) as client:
        inner.state.engine = Engine(config, graphs)
        closed = {"/classify": "post", "/ensemble": "post", "/models": "get", "/no-such-route": "get"}
        docs = ["/", "/docs.json", "/schema.json", f"/static_content/{ASSETS[0]}"]
        if protect_metrics:
            closed["/metrics"] = "get"
        if protect_docs:
            closed.update(dict.fromkeys(docs, "get"))
        for route, method in closed.items():
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
                refused = client.request(method, route, headers=headers, content=png)
                assert refused.status_code == 401 and "Authorization: Bearer KEY" in error_of(refused), route
                assert refused.headers["www-authenticate"].startswith('Bearer realm="classifier"')
                assert refused.headers["connection"] == "close"  # the body it never read goes with the connection
            assert "connection" not in client.request(method, route).headers  # no body: the connection stays
            for headers in ({"X-API-Key": "right-key"}, {"Authorization": "Bearer right-key"}):
                kwargs = {"content": png, "headers": {**headers, "content-type": "image/png"}}
                assert client.request(method, route, **kwargs).status_code in (200, 404), route
        for route in {"/metrics", "/readyz", "/livez", *docs} - set(closed):
            assert client.get(route).status_code == 200, route


def test_a_bug_is_a_500_in_the_same_body(config, graphs, monkeypatch):
    with TestClient(http_app.build(config), raise_server_exceptions=False) as client:
        client.app.state.engine = Engine(config, graphs)
        monkeypatch.setattr(Engine, "models", lambda self: 1 / 0)
        response = client.get("/models")
        assert response.status_code == 500 and "the server log has the traceback" in error_of(response)


def _starlette_items(body: bytes, content_type: str) -> list[tuple[str, str | bytes]]:
    """What Starlette's own streaming parser reads from a multipart body: the oracle of `forms.multipart`."""
    import asyncio

    from starlette.requests import Request

    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0)

    async def read() -> list:
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", content_type.encode())]}
        form = await Request(scope, receive).form()
        return [(k, v if isinstance(v, str) else await v.read()) for k, v in form.multi_items()]

    return asyncio.run(read())


@pytest.mark.parametrize(
    "files, data",
    [
        ([("images", ("a.png", b"\x89PNG\r\n--not the boundary\r\n\r\n", "image/png"))], {"top_k": "3"}),
        ([("images", ("a b;c.png", b"", "image/png")), ("images", ('q"uote.jpg', b"x" * 70_000, "image/jpeg"))], {}),
        ([("images", ("é.png", b"\r\n\r\n", "application/octet-stream"))], {"model": "näme", "voting": ""}),
        ([("top_k", (None, "2")), ("images", ("a.png", bytes(range(256)) * 3, "image/png"))], {}),
    ],
)
def test_the_whole_body_multipart_reader_reads_what_starlettes_parser_reads(files, data):
    from service.http.forms import multipart

    request = httpx.Request("POST", "http://x/classify", files=files, data=data)
    body, content_type = request.read(), request.headers["content-type"]
    assert multipart(body, content_type) == _starlette_items(body, content_type)
    # a preamble before the first boundary and an epilogue after the last are not parts (RFC 2046)
    assert multipart(b"preamble\r\n" + body + b"epilogue", content_type) == _starlette_items(body, content_type)


def test_a_multipart_body_that_does_not_parse_is_named():
    from service.errors import InputError
    from service.http.forms import multipart

    part = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nPNG'
    for body, content_type, why in [
        (part + b"\r\n--b--\r\n", "multipart/form-data", "Missing boundary"),
        (b"no delimiter at all", "multipart/form-data; boundary=b", "no boundary in the body"),
        (part, "multipart/form-data; boundary=b", "part 0 is not closed by the boundary"),
        (b"--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--", "multipart/form-data; boundary=b", "part 0 has no"),
    ]:
        with pytest.raises(InputError, match=why) as refused:
            multipart(body, content_type)
        assert refused.value.status == 400 and "not valid multipart/form-data" in refused.value.message


def test_a_large_multipart_body_streams_through_starlettes_parser_to_the_same_answer(app, monkeypatch):
    from service.http import forms

    files = [("images", ("r.png", encoded(RED), "image/png")), ("images", ("b.png", encoded(BLUE), "image/png"))]
    whole = post(app, "/classify", files=files, data={"top_k": "2"})
    monkeypatch.setattr(forms, "WHOLE_BODY_BYTES", 10)  # every body is "large" now
    streamed = post(app, "/classify", files=files, data={"top_k": "2"})
    assert whole.status_code == streamed.status_code == 200 and whole.json() == streamed.json()


def test_a_clients_malformed_bodies_cannot_flood_the_log(app, caplog, monkeypatch):
    """python-multipart logs a WARNING for each malformed body Starlette's streaming parser gives it (issue 31: about
    2,000 in an attack run). At most 10 a minute get through, then one line says the rest are held back, and the first
    line of a later minute comes after one that counts them."""
    from service.http import log_limit

    [limit] = [f for f in logging.getLogger("python_multipart.multipart").filters if isinstance(f, log_limit.AtMost)]
    now = [1000.0]
    for name, value in (("clock", lambda: now[0]), ("started", now[0]), ("passed", 0), ("held", 0)):
        monkeypatch.setattr(limit, name, value)
    caplog.set_level(logging.INFO)
    headers = {"content-type": "multipart/form-data; boundary=b"}

    def malformed(times: int) -> list[logging.LogRecord]:
        caplog.clear()
        for _ in range(times):  # no length: Starlette's parser reads it
            response = post(app, "/classify", content=iter([b"garbage" * 10]), headers=headers)
            assert response.status_code == 400 and "Invalid multipart data" in error_of(response), response.text
        return [r for r in caplog.records if r.levelno >= logging.WARNING]

    lines = malformed(30)
    assert [r.name for r in lines] == ["python_multipart.multipart"] * 10 + ["service"], [r.name for r in lines]
    held = "the rest of this minute's are counted, not logged"
    assert (
        lines[-1].getMessage()
        == f"python_multipart.multipart logged 10 WARNING lines this minute (malformed bodies from clients); {held}"
    )
    now[0] += 59
    assert malformed(5) == []
    now[0] += 2
    lines = malformed(1)
    assert [r.name for r in lines] == ["service", "python_multipart.multipart"], [r.name for r in lines]
    assert lines[0].getMessage() == "python_multipart.multipart: 25 more WARNING lines held back in the minute before"


def _asgi(app, method: str, path: str, headers: list, chunks: list[bytes], ends: bool = False) -> tuple[dict, dict]:
    """A request driven through the ASGI interface itself, whose `receive` a test client cannot hold back: `chunks`
    of its body, the last one its end if `ends`; otherwise nothing more, ever. Returns the answer's start message
    and its JSON body."""
    import asyncio

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 3000),
             "client": ("127.0.0.1", 5), "root_path": ""}  # fmt: skip
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages[-1]["more_body"] = not ends
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the rest never comes
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    async def call() -> None:
        await asyncio.wait_for(app(scope, receive, send), 30)  # a hang fails the test, not the suite

    asyncio.run(call())
    return sent[0], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_a_body_that_stops_is_answered_408(config, graphs):
    """A body that stops half-way (a client that sends a length and then too little, or a chunked body without its
    end) is answered 408 once `connections.body_timeout_s` has passed, and its connection closed."""
    slow = config.model_copy(update={"connections": config.connections.model_copy(update={"body_timeout_s": 0.3})})
    app = http_app.build(slow)
    app.state.engine = Engine(config, graphs)
    document = TestClient(app).get("/docs.json").json()
    head = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
    for headers in ([(b"content-length", b"100000")], [(b"transfer-encoding", b"chunked")]):
        multipart = [(b"content-type", b"multipart/form-data; boundary=b"), *headers]
        start, body = _asgi(app, "POST", "/classify", multipart, [head])
        assert start["status"] == 408 and (b"connection", b"close") in start["headers"], start
        assert body == {"error": "the body did not arrive within 0.3 s of the request (connections.body_timeout_s); "
                                 "send it whole, at once"}  # fmt: skip
        schema = document["paths"]["/classify"]["post"]["responses"]["408"]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": document["components"]})


def test_an_answer_before_the_whole_body_closes_its_connection(config, graphs):
    """A refusal given before the request's body has all arrived (a body found malformed part-way, a method or a path
    refused unread) closes the connection: the client could go on sending the rest, and its connection stayed open
    while it did (issue 31). The same refusal of a body that has all arrived keeps the connection."""
    app = http_app.build(config)
    app.state.engine = Engine(config, graphs)
    multipart = [(b"content-type", b"multipart/form-data; boundary=b"), (b"transfer-encoding", b"chunked")]
    for method, path, headers, first in [
        ("POST", "/classify", multipart, b"x" * 100),  # streamed (no length), refused at its first bytes
        ("PUT", "/classify", [(b"content-length", b"60")], b"{"),
        ("POST", "/no-such-route", [(b"content-length", b"60")], b"{"),
    ]:
        start, body = _asgi(app, method, path, headers, [first])
        assert start["status"] in (400, 404, 405) and (b"connection", b"close") in start["headers"], (path, start)
        assert set(body) == {"error"}
    whole = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"100")]
    start, body = _asgi(app, "POST", "/classify", whole, [b"x" * 100], ends=True)
    assert start["status"] == 400 and b"connection" not in dict(start["headers"]), start


def test_images_waiting_for_the_budget_are_read_again_and_answered_alike(config, graphs, monkeypatch):
    """With room in the decoding budget for one image at a time, a request of four parts still gets the answers it
    gets with room for all: a part's cost comes from its header, and its bytes are read from its file only once
    there is room (not held while it waits, nor read twice), and the budget is all given back."""
    from service import pixels
    from service.decode import decode_within
    from service.http import forms

    pngs = [encoded(colour, size=(300, 200)) for colour in (RED, BLUE, (0, 200, 0), (90, 90, 90))]
    costs: list[int] = []
    for data in pngs:
        decode_within(data, 0, config.limits, app_preprocess(graphs), lambda cost: costs.append(cost) or False)
    one_at_a_time = max(c + len(d) for c, d in zip(costs, pngs, strict=True))
    limits = config.limits.model_copy(update={"decode_budget_bytes": one_at_a_time})
    tight = config.model_copy(update={"limits": limits})
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(pngs)]
    monkeypatch.setattr(forms, "WHOLE_BODY_BYTES", 10)  # the parts come as Starlette's spooled files
    reads: list[tuple[int, bool]] = []  # (part, whether the other request had given the budget back)
    released = threading.Event()
    monkeypatch.setattr(
        pixels, "read", lambda *a, read=pixels.read: reads.append((a[1], released.is_set())) or read(*a)
    )
    answers = []
    for settings in (config, tight):
        reads.clear()
        with TestClient(http_app.build(settings)) as client:
            client.app.state.engine = engine = Engine(settings, graphs)
            if settings is tight:  # another request's image holds the whole budget for the first 0.3 s
                assert engine.budget.take(one_at_a_time)
                threading.Timer(0.3, lambda held=engine.budget: released.set() or held.give_back(one_at_a_time)).start()
            answers.append(client.post("/classify", files=files).json())
            assert engine.budget.used == 0
    assert answers[0] == answers[1] and len(answers[1]) == 4
    assert sorted(reads) == [(i, True) for i in range(4)], reads  # each part read once, after the room came


def test_large_images_decode_in_threads_of_lower_priority_and_answer_alike(config, graphs, monkeypatch):
    """An image whose decoding costs over LARGE_BYTES is decoded in a thread LARGE_NICE below the worker's priority
    (the kernel's nice value of the thread itself), and gets the answer it gets decoded in place; the budget is all
    given back."""
    import os

    from service import pixels

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: list[int] = []
    monkeypatch.setattr(pixels, "decode", lambda *a, decode=pixels.decode: seen.append(nice()) or decode(*a))
    files = [
        ("images", (f"{i}.png", encoded(colour, size=(300, 200)), "image/png")) for i, colour in enumerate((RED, BLUE))
    ]
    answers = []
    for large in (pixels.LARGE_BYTES, 0):  # the default: these are small, decoded in place; 0: every image is large
        monkeypatch.setattr(pixels, "LARGE_BYTES", large)
        with TestClient(http_app.build(config)) as client:
            client.app.state.engine = engine = Engine(config, graphs)
            answers.append(client.post("/classify", files=files).json())
            assert engine.budget.used == 0
    assert answers[0] == answers[1] and len(answers[1]) == 2
    assert seen == [nice() + pixels.LARGE_NICE] * 2, seen  # decoded in the large images' threads only when large


def app_preprocess(graphs: dict) -> dict:
    from core import metadata

    return metadata.preprocess_of(graphs["a"][1].meta)
