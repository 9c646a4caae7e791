"""A request's fields and images, read from whatever body a client sends, every mistake an `InputError` naming it.

Four bodies are read:
- `multipart/form-data` (curl -F): the images as file parts named `images`, the other fields as plain parts;
- one image as the whole body (`Content-Type: image/png`, `image/jpeg`, ..., or `application/octet-stream`):
  the cheapest request, as Triton and TF Serving take them; the fields then come as query parameters;
- JSON (an object of fields) or a URL-encoded form: the fields only (/models, or a mistake to name).
Query parameters are read with every body; a field sent both there and in the body is refused. A whole-number field
(`top_k`) is decimal digits as text (`top_k=3`) and an integer in JSON: `true`, `1e3`, `1_000`, ` 3` and `3.0` are
refused, not read as numbers. A text field keeps its text (`model=1` is the model named "1"), or the text of a JSON
string (`model="a"`), as BentoML's clients sent them. Nothing in a request is ever fetched: a URL where an image
belongs is refused, not downloaded.
"""

from __future__ import annotations

import asyncio
import json
import re
import typing as t
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.decode import LIMIT, listed, quoted
from service.errors import InputError
from service.http.bodies import JSON_TYPES, TOO_LARGE, TOO_SLOW, is_raw_image, parse_json
from service.pixels import Image

FILE_HINT = "curl -F images=@digit.png"
RAW_HINT = "curl --data-binary @digit.png -H 'Content-Type: image/png'"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# a client's status for a body that ended early because the client left (nginx's "client closed request")
DISCONNECTED = 499
# a multipart body of at most this many bytes is read whole and split in one pass (`multipart`); a larger one streams
# through Starlette's parser, which spools large parts to disk. Starlette's parser cost the server more CPU a request
# for a photo as a part than as the whole body, several times what this one costs (bench/README.md, 'Host CPU per
# request')
WHOLE_BODY_BYTES = 4 * 2**20
# Starlette's message when a streamed body has more file parts than `max_files` (starlette 1.10)
TOO_MANY_FILES = "Too many files"
# a whole number as text: ASCII decimal digits (str.isdigit and int() take others: '²', '١', '1_000', ' 3')
WHOLE = re.compile(r"-?[0-9]+", re.ASCII)
# a whole number of more digits is read as 10**18: more than any model's classes, which top_k gives at most (int()
# refuses a text of over 4,300 digits)
MOST_DIGITS = 18


@dataclass(frozen=True)
class Field:
    kind: type  # int or str
    default: t.Any
    description: str


@dataclass(frozen=True)
class Spec:
    """What a route takes: its plain fields and whether it takes images (the multipart field `images`)."""

    path: str
    fields: dict[str, Field]
    images: bool = True

    def names(self) -> list[str]:
        return ["images", *self.fields] if self.images else list(self.fields)

    def accepted(self) -> str:
        names = ", ".join(f"'{n}'" for n in self.names())
        return f"{self.path} accepts {names}" if names else f"{self.path} takes no fields"

    def describe(self, name: str) -> str:
        if name == "images" and self.images:
            return f"one or more image files, each a multipart file part named 'images' ({FILE_HINT})"
        return {int: "a whole number", str: "text"}[self.fields[name].kind]


@dataclass
class Parsed:
    images: list[Image]
    values: dict[str, t.Any]  # every field of the spec: the request's value or the default


async def parse(request: Request, spec: Spec) -> Parsed:
    """The request's images and fields, checked against `spec`."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    query = request.query_params
    sent: dict[str, t.Any] = {}
    for name in query:
        values = query.getlist(name)
        if len(values) > 1:
            raise InputError(400, f"field '{name}' was sent {len(values)} times; send it once")
        sent[name] = values[0]
    _check_names(spec, sent, set())
    if "images" in sent:
        raise _not_a_file("images", "a query parameter")
    images: list[Image] = []
    if media_type in FORM_TYPES:
        form_images, form_values = await _form(request, spec, media_type)
        images += form_images
        _merge(sent, form_values)
    elif is_raw_image(media_type) and spec.images:
        images.append(await _body(request))
    elif media_type in JSON_TYPES:
        _merge(sent, await _json(request, spec))
    else:
        how = f"send multipart/form-data ({FILE_HINT})" if spec.images else "send JSON or a form"
        if spec.images:
            how += f" or one image as the whole body ({RAW_HINT})"
        raise InputError(415, f"unsupported body type {quoted(media_type)}: {how}; {spec.accepted()}")
    values = {name: _checked(spec, name, sent[name]) if name in sent else f.default for name, f in spec.fields.items()}
    if spec.images and not images:
        raise InputError(400, f"no images: send {spec.describe('images')}, or one image as the whole body "
                              f"({RAW_HINT})")  # fmt: skip
    return Parsed(images, values)


def _merge(sent: dict[str, t.Any], more: dict[str, t.Any]) -> None:
    for name, value in more.items():
        if name in sent:
            raise InputError(400, f"field '{name}' was sent twice (as a query parameter and in the body); send it once")
        sent[name] = value


async def _form(request: Request, spec: Spec, media_type: str) -> tuple[list[Image], dict[str, t.Any]]:
    """A form's images (its file parts named `images`) and its plain fields, each mistake refused by name."""
    items = await _form_items(request, media_type)
    names = list(dict.fromkeys(name for name, _ in items))
    _check_names(spec, names, {name for name, value in items if not isinstance(value, str)})
    images: list[Image] = []
    values: dict[str, t.Any] = {}
    for name in names:
        parts = [value for n, value in items if n == name]
        if name == "images":
            if any(isinstance(v, str) for v in parts):
                raise _not_a_file(name, "text")
            images = t.cast(list[Image], parts)
        elif len(parts) > 1:
            raise InputError(400, f"field '{name}' was sent {len(parts)} times; send it once")
        elif not isinstance(parts[0], str):
            raise InputError(400, f"field '{name}' is a file part; send {spec.describe(name)} as a plain value "
                                  f"(curl -F {name}=VALUE)")  # fmt: skip
        else:
            values[name] = parts[0]
    return images, values


async def _form_items(request: Request, media_type: str) -> list[tuple[str, str | Image]]:
    """(name, value) of every part in order: text for a plain field, bytes or an UploadFile for a file part."""
    length = request.headers.get("content-length", "")
    if media_type == "multipart/form-data" and length.isdigit() and int(length) <= WHOLE_BODY_BYTES:
        return multipart(await _body(request), request.headers["content-type"])
    most = request.app.state.limits.max_images_per_request
    try:
        # spooling stops a part past the most images a request may have: one more is still read, so that the images
        # of a body with one more are counted as in a whole body, or a file part under another name is named
        form = await request.form(max_files=most + 1)
    except ClientDisconnect:
        raise _cut_short(request) from None
    except Exception as e:  # noqa: BLE001 - Starlette's HTTPException(400) and the multipart parser's errors
        why = str(getattr(e, "detail", e))
        if why.startswith(TOO_MANY_FILES):  # too many images, as from a whole body: 413, not Starlette's 400
            raise InputError(413, f"more than {most + 1} file parts; the limit is {most} images a request") from None
        raise InputError(400, f"the body is not valid {media_type}: {why}") from None
    return list(form.multi_items())


def multipart(body: bytes, content_type: str) -> list[tuple[str, str | bytes]]:
    """A whole multipart/form-data body (RFC 7578) -> (name, value) of each part: the bytes of a file part (one
    with a filename), the text of a plain one. The delimiters are found by `bytes.find`, in C, and each part is
    sliced out once; InputError(400) names what is wrong with a body that does not parse."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _bad_multipart("Missing boundary in multipart.")
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    if at < 0:
        raise _bad_multipart("no boundary in the body")
    items: list[tuple[str, str | bytes]] = []
    at += len(delimiter)
    while not body.startswith(b"--", at):  # "--" after a delimiter closes the body
        line_end = body.find(b"\r\n", at)
        head_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        end = body.find(b"\r\n" + delimiter, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            raise _bad_multipart(f"part {len(items)} is not closed by the boundary")
        name, filename = _disposition(body[line_end + 2 : head_end], len(items))
        data = body[head_end + 4 : end]
        # a plain part's bytes that are not UTF-8 are replaced, as Starlette's parser does: such a value is
        # refused by its field (an image sent as text: `curl -F "images=<digit.png"`)
        items.append((name, data) if filename is not None else (name, data.decode("utf-8", "replace")))
        at = end + 2 + len(delimiter)
    return items


def _disposition(head: bytes, index: int) -> tuple[str, str | None]:
    """The field name and file name (None for a plain field) of a part's headers."""
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            _, options = parse_options_header(value.decode("latin-1"))
            if b"name" not in options:
                break
            filename = options.get(b"filename")
            return options[b"name"].decode("latin-1"), None if filename is None else filename.decode("latin-1")
    raise _bad_multipart(f"part {index} has no Content-Disposition with a name")


def _bad_multipart(why: str) -> InputError:
    return InputError(400, f"the body is not valid multipart/form-data: {why}")


async def _body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientDisconnect:
        raise _cut_short(request) from None


async def _json(request: Request, spec: Spec) -> dict[str, t.Any]:
    body = await _body(request)
    try:
        # off the event loop: a body of max_json_bytes takes a while to parse
        data = await asyncio.to_thread(parse_json, body, "the JSON body") if body.strip() else {}
    except ValueError:
        raise InputError(400, f"the body is not valid JSON; send multipart/form-data ({FILE_HINT})") from None
    if not isinstance(data, dict):
        raise InputError(400, f"a JSON body must be an object of fields; {spec.accepted()}")
    _check_names(spec, data, set())
    if "images" in data and spec.images:
        raise _not_a_file("images", "a value in a JSON body")
    return data


def _check_names(spec: Spec, names: t.Iterable[str], files: set[str]) -> None:
    unknown = [n for n in names if n not in spec.names()]
    if not unknown:
        return
    hint = ""
    if files & set(unknown) and spec.images:
        hint = f"; send the images as file parts named 'images' ({FILE_HINT})"
    plural = "s" if len(unknown) > 1 else ""
    raise InputError(400, f"unknown field{plural} {listed(unknown)}{hint}; {spec.accepted()}")


def _checked(spec: Spec, name: str, value: t.Any) -> t.Any:
    """A plain field's value as its type. Text (a form field, a query parameter, a JSON string): a whole number if it
    is decimal digits; for a text field, itself, or the text of a JSON string. Any other JSON value: itself."""
    kind = spec.fields[name].kind
    if isinstance(value, str) and kind is int and WHOLE.fullmatch(value):
        sign, digits = (-1 if value.startswith("-") else 1), value.lstrip("-").lstrip("0") or "0"
        return sign * (int(digits) if len(digits) <= MOST_DIGITS else 10**MOST_DIGITS)
    if isinstance(value, str) and kind is str:
        try:
            parsed = parse_json(value, "a form value")
        except ValueError:
            parsed = value
        return parsed if isinstance(parsed, str) else value
    if type(value) is kind:  # a JSON value; bool is not a whole number, nor 3.0
        return value
    raise InputError(400, f"field '{name}' must be {spec.describe(name)}, got {_shown(value)}")


def _shown(value: t.Any) -> str:
    """A refused value as it was sent, cut as `quoted` cuts: text quoted, a JSON value in JSON (`true`, not True)."""
    if isinstance(value, str):
        return quoted(value)
    text = json.dumps(value)
    return text if len(text) <= LIMIT else f"{text[:LIMIT]}... ({len(text)} characters)"


def _not_a_file(name: str, how: str) -> InputError:
    return InputError(
        400,
        f"field '{name}' must be image files sent as multipart file parts ({FILE_HINT}), not {how}; "
        f"a path without '@', a URL-encoded body (curl -d) or a URL is not read: the service never downloads",
    )


def _cut_short(request: Request) -> InputError:
    """The refusal of a body that ended early: past the bound (service/http/bodies.py), or the client left."""
    if TOO_LARGE in request.scope:
        bound, setting = request.scope[TOO_LARGE]
        return InputError(413, f"the body is over {bound} bytes, the limit ({setting})")
    if TOO_SLOW in request.scope:
        seconds = request.scope[TOO_SLOW]
        return InputError(408, f"the body did not arrive within {seconds:g} s of the request "
                               "(connections.body_timeout_s); send it whole, at once")  # fmt: skip
    return InputError(DISCONNECTED, "the client disconnected before the end of the body")
