"""The type of the `images` field: an uploaded file kept in memory, not copied to a temporary file.

BentoML turns a `Path` field into a temporary file per upload, written on the event loop, which the
service then reads back: in the py-spy profile of the classifier under load (bench/README.md) creating,
writing and deleting those files took about 10% of the event loop. `Upload` is still a file field to
BentoML (multipart parsing and the OpenAPI "binary" schema come from its being a `PurePath` subclass),
but its validator keeps Starlette's upload object, which holds small files in memory, as it is.
"""

from __future__ import annotations

import pathlib
import typing as t

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema
from starlette.datastructures import UploadFile

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
