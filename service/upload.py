"""The type of the `images` field: an uploaded file kept in memory, not copied to a temporary file.

BentoML turns a `Path` field into a temporary file per upload, written on the event loop, which the
service then reads back: in the py-spy profile of the classifier under load (bench/README.md) creating,
writing and deleting those files took about 10% of the event loop. `Upload` is still a file field to
BentoML (multipart parsing and the OpenAPI "binary" schema come from its being a `PurePath` subclass),
but its validator keeps Starlette's upload object, which holds small files in memory, as it is.

Upstream (bentoml 1.4.40), what this relies on: `_bentoml_sdk/io_models.py`,
`IOMixin.__pydantic_init_subclass__` puts a field in `multipart_fields` when `is_file_type` says its type
(or a list's item type) is a `pathlib.PurePath` subclass; `_bentoml_impl/serde.py`,
`MultipartSerde.parse_request` passes each part of such a field through `ensure_file`, which returns a
Starlette `UploadFile` as it is, and validates the list of them with the input model. The temporary
file comes from `_bentoml_sdk/validators.py`, `FileSchema.decode`, which `_bentoml_sdk/_pydantic.py`,
`pathlib_prepare_pydantic_annotations` attaches only to the exact `pathlib` classes, so a subclass keeps
its own validator. `check()` sends a real multipart body through that code at start-up and requires the
part's `UploadFile`, bytes intact, in the validated field (service/patches.py).

`Form` is the base of the routes' input specs: it parses each request itself (Starlette's form parser, no
URL is ever fetched) and turns every client mistake into a 4xx that names the field and what to send.
"""

from __future__ import annotations

import asyncio
import contextvars
import pathlib
import typing as t
from concurrent.futures import ThreadPoolExecutor

from _bentoml_impl.serde import MultipartSerde
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import IODescriptor
from pydantic import ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic_core import core_schema
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from service import patches
from service.bodies import TOO_LARGE, parse_json
from service.decode import listed, quoted
from service.errors import InputError


class Upload(pathlib.PurePosixPath):
    """A multipart file part. Validation yields the `UploadFile` itself (`.size`, `.file`), never a path."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: t.Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls._validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        # as BentoML's own file fields say it (_bentoml_sdk/validators.py, FileSchema.__get_pydantic_json_schema__):
        # "file" in the validation schema that /schema.json serves, which is how BentoML's HTTP client
        # (_bentoml_impl/client/http.py, `_build_request`: `has_file`) knows to send a multipart body with the
        # files as parts; OpenAPI's "string"/"binary" in the serialization schema /docs.json is built from
        if handler.mode == "validation":
            return {"type": "file", "format": "binary"}
        return {"type": "string", "format": "binary"}

    @staticmethod
    def _validate(value: t.Any) -> UploadFile:
        if not isinstance(value, UploadFile):
            raise ValueError("must be a file part of a multipart/form-data body")
        return value


def read(upload: UploadFile, index: int, max_bytes: int) -> bytes:
    """The part's bytes, refused by its size before it is read into memory. Blocking (a file over the
    spooling threshold is on disk): call it off the event loop."""
    size = upload.size if upload.size is not None else upload.file.seek(0, 2)
    if size > max_bytes:
        raise InputError(413, f"image {index} is {size} bytes; the limit is {max_bytes}")
    upload.file.seek(0)
    return upload.file.read()


# The refusal of the request being handled, set by `Form.from_http_request` for the route to answer: BentoML
# answers an exception raised while parsing itself, as an ERROR with a traceback and a body of its own
# (_bentoml_impl/server/app.py, `api_endpoint_wrapper`), while the route returns the service's own error body.
# The route runs in the task (or, for a sync route, anyio's copy of the context) that parsed its request.
REFUSED: contextvars.ContextVar[InputError | None] = contextvars.ContextVar("refused", default=None)
FILE_HINT = "curl -F images=@digit.png"


def _describe(cls: type[IODescriptor], name: str) -> str:
    """What a client should send in field `name`, in words."""
    if name in cls.multipart_fields:
        return f"one or more image files, each a multipart file part named '{name}' ({FILE_HINT})"
    annotation = cls.model_fields[name].annotation
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(annotation, "a value")


def _accepted(cls: type[IODescriptor], path: str) -> str:
    names = ", ".join(f"'{n}'" for n in cls.model_fields)
    return f"{path} accepts {names}" if names else f"{path} takes no fields"


def _not_a_file(name: str, how: str) -> InputError:
    return InputError(
        400,
        f"field '{name}' must be image files sent as multipart file parts ({FILE_HINT}), not {how}; "
        f"a path without '@', a URL-encoded body (curl -d) or a URL is not read: the service never downloads",
    )


def _check_names(cls: type[IODescriptor], names: t.Iterable[str], path: str, files: set[str]) -> None:
    unknown = [n for n in names if n not in cls.model_fields]
    if not unknown:
        return
    fields = listed(unknown)
    hint = ""
    if files & set(unknown) and cls.multipart_fields:
        hint = f"; send the images as file parts named '{cls.multipart_fields[0]}' ({FILE_HINT})"
    raise InputError(400, f"unknown field{'s' if len(unknown) > 1 else ''} {fields}{hint}; {_accepted(cls, path)}")


def _plain(value: str, annotation: t.Any) -> t.Any:
    """A form value as BentoML's multipart parser reads one (its client sends `json.dumps(value)`): JSON where
    it parses, else the text itself; a text field keeps its text ("1" stays "1")."""
    try:
        parsed = parse_json(value, "a form value")
    except ValueError:
        return value
    return value if annotation is str and not isinstance(parsed, str) else parsed


async def _fields(cls: type[IODescriptor], request: Request) -> dict[str, t.Any]:
    """The request's fields, with every mistake a client can make refused by name; never fetches a URL.

    Replaces BentoML's parsing for the service's routes: `MultipartSerde.parse_request`
    (_bentoml_impl/serde.py) hands each text value of a file field to `ensure_file`, which downloads it as a
    URL, and reads a file part sent under another field's name as JSON (a UnicodeDecodeError: a 500)."""
    path = request.url.path
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except ClientDisconnect:
            raise _cut_short(request) from None
        except Exception as e:  # noqa: BLE001 - Starlette's HTTPException(400) and the multipart parser's errors
            raise InputError(400, f"the body is not valid {media_type}: {getattr(e, 'detail', e)}") from None
        files = {k for k, v in form.multi_items() if not isinstance(v, str)}
        _check_names(cls, form.keys(), path, files)
        data: dict[str, t.Any] = {}
        for name in form:
            values = form.getlist(name)
            if name in cls.multipart_fields:
                if not all(isinstance(v, UploadFile) for v in values):
                    raise _not_a_file(name, "text")
                data[name] = values
            elif len(values) > 1:
                raise InputError(400, f"field '{name}' was sent {len(values)} times; send it once")
            elif isinstance(values[0], UploadFile):
                raise InputError(400, f"field '{name}' is a file part; send {_describe(cls, name)} as a plain value "
                                      f"(curl -F {name}=VALUE)")  # fmt: skip
            else:
                data[name] = _plain(values[0], cls.model_fields[name].annotation)
        return data
    if media_type in ("", "application/json"):
        try:
            body = await request.body()
        except ClientDisconnect:
            raise _cut_short(request) from None
        try:
            # off the event loop: a body of max_json_bytes takes a while to parse
            data = await asyncio.to_thread(parse_json, body, "the JSON body") if body.strip() else {}
        except ValueError:
            raise InputError(400, f"the body is not valid JSON; send multipart/form-data ({FILE_HINT})") from None
        if not isinstance(data, dict):
            raise InputError(400, f"a JSON body must be an object of fields; {_accepted(cls, path)}")
        _check_names(cls, data, path, set())
        for name in cls.multipart_fields:
            if name in data:
                raise _not_a_file(name, "a value in a JSON body")
        return data
    send = f"send multipart/form-data ({FILE_HINT}); {_accepted(cls, path)}"
    raise InputError(415, f"unsupported body type {quoted(media_type)}: {send}")


# the status logged for a request whose client left before its body ended (nginx's "client closed request");
# nobody reads the answer
DISCONNECTED = 499


def _cut_short(request: Request) -> InputError:
    """The refusal of a body that ended early: past the bound (service/bodies.py), or the client left."""
    bound = request.scope.get(TOO_LARGE)
    if bound is not None:
        return InputError(413, f"the body is over {bound} bytes, the limit (limits.max_body_bytes, max_json_bytes)")
    return InputError(DISCONNECTED, "the client disconnected before the end of the body")


def _invalid(cls: type[IODescriptor], error: ValidationError) -> InputError:
    first = error.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "body"
    if name not in cls.model_fields:
        return InputError(400, f"invalid request: {first['msg']}")
    if first["type"] == "missing":
        if name in cls.multipart_fields:
            return InputError(400, f"no {name}: send {_describe(cls, name)}")
        return InputError(400, f"field '{name}' is missing: send {_describe(cls, name)}")
    return InputError(400, f"field '{name}' must be {_describe(cls, name)}, got {quoted(first.get('input'))}")


class Form(IODescriptor):
    """The input of a route, parsed and refused by the service itself (`_fields`): a mistake becomes a 4xx in the
    service's error body that names the field and what to send, set in `REFUSED` for the route to return.

    BentoML calls `from_http_request` on a route's input spec for every request
    (_bentoml_impl/server/app.py, `ServiceAppFactory.api_endpoint`) and passes the model's fields to the route as
    keyword arguments; a refused request gets the fields' defaults (and no files)."""

    # unknown fields are refused (`_check_names`): the request schemas say so (additionalProperties: false)
    model_config = ConfigDict(extra="forbid")

    @classmethod
    async def from_http_request(cls, request: Request, serde: t.Any) -> Form:
        try:
            model = cls.model_validate(await _fields(cls, request))
        except InputError as e:
            refused = e
        except ValidationError as e:
            refused = _invalid(cls, e)
        else:
            REFUSED.set(None)
            return model
        REFUSED.set(refused)
        return cls.model_construct(**{name: [] for name in cls.multipart_fields})


def _probe(images: list[Upload]) -> None:
    """An API signature like the service's: its input model is built by BentoML as the service's is."""


async def _parse(body: bytes, boundary: str) -> t.Any:
    model = IODescriptor.from_input(_probe)
    if "images" not in model.multipart_fields:
        raise patches.mismatch("service/upload.py", "a list[Upload] field is not one of the input's multipart_fields")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    return await MultipartSerde().parse_request(Request(scope, receive), model)


@patches.checks("service/upload.py")
def check() -> None:
    """BentoML's multipart parsing still hands an `Upload` field the Starlette `UploadFile` of each part."""
    boundary, payload = "imgclf-check", b"\x89PNG not really"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    # a loop of its own in a thread: start-up may already be inside a running event loop
    with ThreadPoolExecutor(1) as pool:
        parsed = pool.submit(asyncio.run, _parse(body, boundary)).result(timeout=30)
    images = parsed.images
    # the service's routes parse their own requests (`Form`): BentoML must still call the input spec's hook
    if "from_http_request" not in ServiceAppFactory.api_endpoint.__code__.co_names:
        raise patches.mismatch("service/upload.py", "ServiceAppFactory.api_endpoint no longer calls from_http_request")
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], UploadFile)):
        raise patches.mismatch("service/upload.py", f"an Upload field was given {images!r}, not [UploadFile]")
    if images[0].file.read() != payload:
        raise patches.mismatch("service/upload.py", "the UploadFile an Upload field was given lost the part's bytes")


patches.guard(check)
