"""The OpenAPI document served at /docs.json (and read by the page at /): each route's fields, both ways to send
images, its answers and every status it refuses with, in the service's own error body.

Built once from the routes' specs (service/http/routes.py) and the answers' models (service/http/answers.py), so
it cannot drift from what the routes read; tests/test_app.py checks real answers, good and bad, against it.
"""

from __future__ import annotations

import importlib.metadata
import typing as t

from pydantic import BaseModel

from service.config import Auth, Limits
from service.http import keys
from service.http.answers import Classification, EnsembleClassification
from service.http.forms import RAW_HINT, Spec
from service.http.routes import CLASSIFY, ENSEMBLE, MODELS

# What each route really answers besides 200: the status, when, and always the body {"error": str}
REFUSALS = {
    400: "a malformed request: an unknown or misspelt field, text or a URL where image files belong, a field sent "
    "twice, a body that is not valid multipart/form-data or JSON, top_k not a whole number of at least 1, an unknown "
    "voting rule, an empty, truncated or corrupt image",
    404: "an unknown model or ensemble",
    405: "a method other than POST",
    408: "a body that did not all arrive within connections.body_timeout_s of the request",
    413: "more images than limits.max_images_per_request, an image over limits.max_image_bytes or "
    "limits.max_image_pixels or whose decoding alone would exceed limits.decode_budget_bytes, a body over "
    "limits.max_body_bytes (JSON: limits.max_json_bytes; one image as the body: limits.max_image_bytes)",
    415: "an image that is not in a supported format (PNG, JPEG, GIF, BMP, TIFF, WEBP, PPM, MPO), or a body of "
    "another media type than multipart/form-data, an image, JSON or a form",
    500: "an unexpected server error (a bug: the server log has the traceback)",
    503: "overloaded: the request waited longer than batching.max_latency_ms for its batch to start, or its images "
    "waited for room in the worker's decoding budget while it gave nothing back for limits.decode_wait_ms; or the "
    "worker is starting; or the worker holds connections.max_open open connections (then the connection is "
    "closed); with Retry-After",
    504: "not answered within the request timeout (60 s)",
}
ROUTE_STATUSES = {
    "/classify": {n: REFUSALS[n] for n in (400, 404, 405, 408, 413, 415, 500, 503, 504)},
    "/ensemble": {n: REFUSALS[n] for n in (400, 404, 405, 408, 413, 415, 500, 503, 504)},
    "/models": {
        400: "an unknown field (the route takes none), or a body that is not valid JSON or a valid form",
        408: REFUSALS[408],
        413: "a body over limits.max_json_bytes or limits.max_body_bytes",
        415: "a body of another media type than JSON or a form",
        500: REFUSALS[500],
        503: "the worker is starting",
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
MODELS_SCHEMA = {
    "type": "object",
    "title": "Models",
    "properties": {
        "default_model": {"type": "string"},
        "models": {
            "type": "object",
            "description": "by name: tag, arch, labels, input_size, resize_size, "
            "interpolation, precision, metrics, provider, batch_sizes",
        },  # fmt: skip
        "ensembles": {"type": "object", "description": "by name: members, voting, weights"},
    },
    "required": ["default_model", "models", "ensembles"],
}
REF = "#/components/schemas/{model}"


def project_version() -> str:
    try:
        return importlib.metadata.version("imgclf")
    except importlib.metadata.PackageNotFoundError:  # a serving-only install runs the checkout uninstalled
        return "checkout"


def _field_schema(spec: Spec, name: str) -> dict[str, t.Any]:
    field = spec.fields[name]
    schema: dict[str, t.Any] = {"type": "integer" if field.kind is int else "string", "description": field.description}
    if field.default is not None:
        schema["default"] = field.default
    if name == "top_k":
        schema["minimum"] = 1
    return schema


def _operation(spec: Spec, summary: str, answer: type[BaseModel] | None, limits: Limits) -> dict[str, t.Any]:
    fields = {name: _field_schema(spec, name) for name in spec.fields}
    operation: dict[str, t.Any] = {"summary": summary, "operationId": spec.path.strip("/")}
    if spec.images:
        images = {"type": "array", "items": {"type": "string", "format": "binary"},
                  "minItems": 1, "maxItems": limits.max_images_per_request,
                  "description": "the images: one multipart file part each, all named 'images'"}  # fmt: skip
        form = {"type": "object", "properties": {"images": images, **fields}, "required": ["images"],
                "additionalProperties": False}  # fmt: skip
        operation["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": schema,
             "description": f"{schema['description']}; with any body (not also in the body)"}
            for name, schema in fields.items()
        ]  # fmt: skip
        operation["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": form},
            "image/*": {"schema": {"type": "string", "format": "binary"},
                        "description": f"one image as the whole body ({RAW_HINT}); the fields as query parameters"},
        }}  # fmt: skip
    body = (
        {"type": "array", "items": {"$ref": REF.format(model=answer.__name__)}}
        if answer
        else {"$ref": REF.format(model="Models")}
    )
    responses: dict[str, t.Any] = {"200": {"description": "Successful Response",
                                           "content": {"application/json": {"schema": body}}}}  # fmt: skip
    for status, description in ROUTE_STATUSES[spec.path].items():
        responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
    operation["responses"] = responses
    return operation


def _health(summary: str) -> dict[str, t.Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}}


def document(description: str, auth: Auth | None, limits: Limits) -> dict[str, t.Any]:
    """The whole document, `limits` bounding the images of a request; with `auth`, the two ways to send a key and each
    protected route's 401 (Swagger UI then shows an Authorize button)."""
    schemas: dict[str, t.Any] = {"Error": ERROR_SCHEMA, "Models": MODELS_SCHEMA}
    for model in (Classification, EnsembleClassification):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    models = _operation(MODELS, "Every served model and ensemble", None, limits)
    paths: dict[str, t.Any] = {
        "/classify": {"post": _operation(CLASSIFY, "Classify each image with one model", Classification, limits)},
        "/ensemble": {
            "post": _operation(ENSEMBLE, "Classify each image with an ensemble's vote", EnsembleClassification, limits)
        },  # fmt: skip
        "/models": {"get": {**models, "operationId": "models"}, "post": {**models, "operationId": "models_post"}},
        "/livez": _health("The worker is alive"),
        "/readyz": _health("The worker is ready: every model loaded and warmed (503 while starting or draining)"),
        "/metrics": _health("Prometheus metrics: requests, batch sizes, session call times"),
    }
    doc: dict[str, t.Any] = {
        "openapi": "3.0.2",
        "info": {"title": "classifier", "version": project_version(), "description": description},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth is not None:
        _document_keys(doc, auth)
    return doc


def _document_keys(doc: dict[str, t.Any], auth: Auth) -> None:
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    unauthorized = {
        "description": f"no API key, or not one of auth.api_keys_file: {keys.HOW} (WWW-Authenticate: Bearer)",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
    }
    open_, prefixes = keys.open_paths(auth)
    for path, item in doc["paths"].items():
        if path in open_ or path.startswith(prefixes):
            continue
        for operation in item.values():
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["responses"]["401"] = unauthorized
