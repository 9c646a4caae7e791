"""Request bodies bounded before they are read, and JSON parsed without a 500 for anything a client sends.

`BodiesMiddleware` (an ASGI middleware of the app, service/http/app.py) answers 413 from the headers alone for a
Content-Length over the bound of its body type: one image (`limits.max_image_bytes`) for an image sent as the whole
body, `limits.max_json_bytes` for JSON, `limits.max_body_bytes` for the rest. A body sent without a length (chunked)
is counted while it streams: past the bound the route's reader sees the end of the stream (`http.disconnect`), and
`TOO_LARGE` in the request's scope tells it why (service/http/forms.py). A body that has not all arrived within
`connections.body_timeout_s` of the request ends the same way, `TOO_SLOW` saying why: 408, where a body that
trickled in or never ended held its connection for the request timeout and got a 504 (bench/README.md, 'Attacks').

An answer that starts before its request's body has all arrived (a refusal from the headers, a malformed body
refused part-way, a method or path refused without reading it) carries `Connection: close`: otherwise the client
could go on sending the rest of the body, and its connection stayed open while it did (issue 31: one more byte
after a 400, then the next headers a byte at a time, held a connection for as long as the client went on).

`parse_json` parses a JSON body or form value with its nesting checked first: Python's parser recurses, and a
value nested about 1,000 deep raised RecursionError (a 500 with a traceback). Bodies are parsed in a thread, so a
large one does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import typing as t

import numpy as np
from starlette.responses import JSONResponse

from service.config import Limits
from service.errors import InputError

logger = logging.getLogger("service")

# the key in a request's ASGI scope that says its body went past the bound: (the bound in bytes, its setting)
TOO_LARGE = "imgclf.body_too_large"
# the key that says its body did not arrive in time: the seconds it had
TOO_SLOW = "imgclf.body_too_slow"
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


def is_raw_image(media: str) -> bool:
    """Whether a body of this media type is one image, sent as the whole body."""
    return media.startswith("image/") or media == "application/octet-stream"


def body_bound(limits: Limits, media: str) -> tuple[int, str]:
    """The most bytes a body of this media type may have, and the setting that says so: a JSON body carries no
    image, an image body one."""
    if media in JSON_TYPES:
        return limits.max_json_bytes, "limits.max_json_bytes"
    if is_raw_image(media):
        return limits.max_image_bytes, "limits.max_image_bytes"
    return limits.body_bytes(), "limits.max_body_bytes"


def has_body(headers: t.Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers say a body follows."""
    for name, value in headers:
        if (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding":
            return True
    return False


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
    # a text of 2 * MAX_JSON_DEPTH bytes cannot open more than MAX_JSON_DEPTH brackets: short values skip the count
    nested = depth(raw) if len(raw) > 2 * MAX_JSON_DEPTH else 0
    if nested > MAX_JSON_DEPTH:
        raise InputError(400, f"{what} nests {nested} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except RecursionError:  # an unbalanced text the count above could not see through
        raise InputError(400, f"{what} nests too deep; the limit is {MAX_JSON_DEPTH}") from None


class BodiesMiddleware:
    """Refuses a body whose Content-Length is over its bound, bounds the bytes of every body it lets through, and
    closes the connection of an answer given before its body has all arrived."""

    def __init__(self, app: t.Any, limits: Limits, body_timeout_s: float) -> None:
        self.app, self.limits, self.body_timeout_s = app, limits, body_timeout_s

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        bound, setting = body_bound(self.limits, media_type(headers))
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > bound:
            message = f"the body is {int(length)} bytes; the limit is {bound} ({setting})"
            logger.info("refused with 413: %s %s: %s", scope["method"], scope["path"], message)
            response = JSONResponse({"error": message}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        arrived = not has_body(headers)

        async def bounded() -> dict:
            nonlocal seen, arrived
            if TOO_LARGE in scope or TOO_SLOW in scope:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                scope[TOO_SLOW] = self.body_timeout_s
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                arrived = arrived or not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > bound:
                    scope[TOO_LARGE] = (bound, setting)
                    return {"type": "http.disconnect"}
            return message

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start" and not arrived:
                names = {name.lower() for name, _ in message.get("headers", [])}
                if b"connection" not in names:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, bounded, closing)
