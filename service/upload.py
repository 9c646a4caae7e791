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
"""

from __future__ import annotations

import asyncio
import pathlib
import typing as t
from concurrent.futures import ThreadPoolExecutor

from _bentoml_impl.serde import MultipartSerde
from _bentoml_sdk.io_models import IODescriptor
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service import patches
from service.decode import InputError


class Upload(pathlib.PurePosixPath):
    """A multipart file part. Validation yields the `UploadFile` itself (`.size`, `.file`), never a path."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: t.Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls._validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
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
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], UploadFile)):
        raise patches.mismatch("service/upload.py", f"an Upload field was given {images!r}, not [UploadFile]")
    if images[0].file.read() != payload:
        raise patches.mismatch("service/upload.py", "the UploadFile an Upload field was given lost the part's bytes")


patches.guard(check)
