"""The service's refusals: `InputError`, which becomes a 4xx or 5xx in the service's error body `{"error": ...}`,
the response that carries it, and what each route refuses (documented in /docs.json by service/openapi.py)."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

logger = logging.getLogger("service")


class InputError(Exception):
    """A request the service refuses, with the HTTP status and a message that names the part."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self) -> tuple:
        # rebuilt with both arguments when it comes back from a decoding process (Exception's default
        # pickling passes only `args`, the message)
        return InputError, (self.status, self.message)


def refusal(e: InputError) -> JSONResponse:
    """The service's error body for a refused request, logged as one line."""
    # one line a refusal, not a traceback: a client sending bad requests cannot flood the log
    logger.info("refused with %d: %s", e.status, e.message)
    return JSONResponse({"error": e.message}, status_code=e.status)


# What each route really answers besides 200: the status, when, and always the service's own body {"error": str}
# (`refusal`, and service/timeout.py's 504). BentoML documents every route with its generic 400/404/500 bodies
# (`{"error": str, "detail": str}`: _bentoml_sdk/service/openapi.py, `error_responses`), which this service
# never sends: its routes parse their own requests (service/upload.py, `Form`). service/openapi.py documents these.
REFUSALS = {
    400: "a malformed request: an unknown or misspelt field, text or a URL where image files belong, a body that "
    "is not multipart/form-data or JSON, top_k not a whole number of at least 1, an unknown voting rule, an "
    "empty, truncated or corrupt image",
    404: "an unknown model or ensemble",
    413: "more images than limits.max_images_per_request, an image over limits.max_image_bytes or "
    "limits.max_image_pixels or whose decoding alone would exceed limits.decode_budget_bytes, a body over "
    "limits.max_body_bytes (JSON: limits.max_json_bytes)",
    415: "a part that is not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WEBP, PPM, MPO), or a body "
    "of another media type than multipart/form-data or JSON",
    500: "an unexpected server error (a bug: the server log has the traceback)",
    503: "overloaded: the request waited longer than batching.max_latency_ms for its batch to start, or its images "
    "waited longer than limits.decode_wait_ms for room in the worker's decoding budget",
    504: "not answered within the request timeout (60 s)",
}
ROUTE_STATUSES = {
    "/classify": {n: REFUSALS[n] for n in (400, 404, 413, 415, 500, 503, 504)},
    "/ensemble": {n: REFUSALS[n] for n in (400, 404, 413, 415, 500, 503, 504)},
    "/models": {
        400: "an unknown field (the route takes none), or a body that is not valid JSON or a valid form",
        413: "a body over limits.max_json_bytes or limits.max_body_bytes",
        415: "a body of another media type than JSON or a form",
        500: REFUSALS[500],
        504: REFUSALS[504],
    },
}
ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "description": "Every refusal: one message that names the problem, the field or image, and what to send",
    "properties": {"error": {"type": "string", "title": "Message"}},
    "required": ["error"],
    "additionalProperties": False,
}
