"""Request bodies bounded before they are read, and parsed without a 500 for anything a client sends.

`BodiesMiddleware` (an ASGI middleware, as service/auth.py's) answers from the headers alone, in the service's
error body: 405 with `Allow` for another method than POST on a classification route (Starlette's own 405 is plain
text), 415 for BentoML's pickle body type (BentoML refuses it itself, but as an ERROR with a traceback and a list
for a body: _bentoml_impl/server/app.py, `api_endpoint`), and 413 for a Content-Length over the bound. A body
sent without a length (chunked) is counted while it streams: past the bound the route's parser sees the end of
the stream (`http.disconnect`), and `TOO_LARGE` in the request's scope tells it why (service/upload.py).

`parse_json` parses a JSON body or form value with its nesting checked first: Python's parser recurses, and a
value nested about 1,000 deep raised RecursionError (a 500 with a traceback). Bodies are parsed in a thread, so a
large one does not stall the event loop.

Checked against bentoml 1.4.40 (`api_endpoint` refuses `application/vnd.bentoml+pickle` with an exception). No
guard: this uses only BentoML's public `add_asgi_middleware`, and refuses every `application/vnd.bentoml` body
type whatever BentoML does with it (service/patches.py lists it with the other workarounds).
"""

from __future__ import annotations

import json
import logging
import re
import typing as t

import numpy as np
from starlette.responses import JSONResponse

from service.config import Limits
from service.errors import InputError

logger = logging.getLogger("service")

# the key in a request's ASGI scope that says its body went past the bound (the bound, in bytes)
TOO_LARGE = "imgclf.body_too_large"
# the routes take flat fields: a value nested deeper than this is never a valid request
MAX_JSON_DEPTH = 32
JSON_TYPES = ("", "application/json")
# strings (escapes first) hold no structure: removed before the brackets are counted
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def media_type(headers: t.Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


def body_bound(limits: Limits, media: str) -> int:
    """The most bytes a body of this media type may have: a JSON body carries no image."""
    return limits.max_json_bytes if media in JSON_TYPES else limits.body_bytes()


def depth(text: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar)."""
    structure = np.frombuffer(_STRINGS.sub(b"", text), dtype=np.uint8)
    steps = np.zeros(structure.shape, dtype=np.int32)
    steps[(structure == ord("[")) | (structure == ord("{"))] = 1
    steps[(structure == ord("]")) | (structure == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def parse_json(text: bytes | str, what: str) -> t.Any:
    """`text` parsed as JSON; ValueError if it is not JSON, InputError(400) if it nests deeper than MAX_JSON_DEPTH."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    nested = depth(raw)
    if nested > MAX_JSON_DEPTH:
        raise InputError(400, f"{what} nests {nested} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except RecursionError:  # an unbalanced text the count above could not see through
        raise InputError(400, f"{what} nests too deep; the limit is {MAX_JSON_DEPTH}") from None


class BodiesMiddleware:
    """Refuses from the headers what need not be read, and bounds the bytes of every body it lets through."""

    def __init__(self, app: t.Any, routes: t.Iterable[str], limits: Limits) -> None:
        self.app, self.routes, self.limits = app, frozenset(routes), limits

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        media = media_type(headers)
        if scope["path"] in self.routes:
            if scope["method"] not in ("POST", "OPTIONS"):  # OPTIONS: a CORS preflight, where CORS is set
                message = f"{scope['path']} takes POST, not {scope['method']}"
                return await self._refuse(scope, receive, send, 405, message, {"Allow": "POST"})
            if media.startswith("application/vnd.bentoml"):
                how = "send multipart/form-data (curl -F images=@digit.png) or JSON"
                return await self._refuse(scope, receive, send, 415, f"unsupported body type '{media}': {how}")
        bound = body_bound(self.limits, media)
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > bound:
            message = f"the body is {int(length)} bytes; the limit is {bound} (limits.max_body_bytes, max_json_bytes)"
            return await self._refuse(scope, receive, send, 413, message, {"Connection": "close"})
        seen = 0

        async def bounded() -> dict:
            nonlocal seen
            if TOO_LARGE in scope:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > bound:
                    scope[TOO_LARGE] = bound
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, bounded, send)

    async def _refuse(
        self, scope: dict, receive: t.Callable, send: t.Callable, status: int, message: str, headers: dict | None = None
    ) -> None:
        logger.info("refused with %d: %s %s: %s", status, scope["method"], scope["path"], message)
        await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
