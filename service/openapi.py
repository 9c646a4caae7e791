"""The OpenAPI document (/docs.json) as the service really answers: each route's statuses and the real error body.

BentoML documents every route with its generic 400/404/500 bodies (`{"error": str, "detail": str}`:
_bentoml_sdk/service/openapi.py, `error_responses`), which this service never sends (its routes parse their own
requests and answer `{"error": str}`: service/errors.py), and leaves the version "None" when served from a
checkout. BentoML has no public hook for the document: /docs.json serves `service.openapi_spec`
(_bentoml_impl/server/app.py, `openapi_spec_view`), a property of BentoML's Service class, regenerated each
time. So `document()` gives the served Service object a subclass whose property edits what BentoML's returns:
it lists, for each route, the statuses it answers and their body, and with `auth` the two ways to send a key
and each protected route's 401 (Swagger UI then shows an Authorize button).

Checked against bentoml 1.4.40. Guard: `check()` (run at import, service/patches.py) builds a one-route service
and finds the property, the slotted Service class and the document's shape this module edits.
It can go when BentoML lets a service declare its error responses.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import typing as t

import attr
from _bentoml_sdk.service.factory import Service
from bentoml._internal.service.openapi.specification import MediaType, Reference, Schema
from bentoml._internal.service.openapi.specification import Response as OpenAPIResponse

from service import auth as keys
from service import patches
from service.config import Auth
from service.errors import ERROR_SCHEMA, ROUTE_STATUSES

PATCH = "service/openapi.py"
BENTOML_BODIES = ("InvalidArgument", "NotFound", "InternalServerError")  # BentoML's error bodies, unused here


def project_version() -> str:
    try:
        return importlib.metadata.version("imgclf")
    except importlib.metadata.PackageNotFoundError:  # a serving-only install runs the checkout uninstalled
        return "checkout"


def document(service: t.Any, auth: Auth | None) -> None:
    """Make `service` (a `@bentoml.service` class) serve the document described above at /docs.json."""

    class DocumentedService(type(service)):
        __slots__ = ()  # the same layout as BentoML's (attrs, slotted) Service, so an instance can take this class

        @property
        def openapi_spec(self) -> t.Any:
            return edited(super().openapi_spec, inspect.cleandoc(self.inner.__doc__ or ""), auth)

    service.__class__ = DocumentedService


def edited(spec: t.Any, description: str, auth: Auth | None) -> t.Any:
    """BentoML's document with each route's real statuses and error body (and the keys, with `auth`)."""
    if spec.info.version == "None":  # served from a checkout: a built Bento names its version and description
        spec = attr.evolve(spec, info=attr.evolve(spec.info, version=project_version(), description=description))
    schemas = spec.components["schemas"]
    for name in BENTOML_BODIES:
        schemas.pop(name, None)
    schemas["Error"] = Schema(**ERROR_SCHEMA)
    error = MediaType(schema=Reference("#/components/schemas/Error"))
    for route, statuses in ROUTE_STATUSES.items():
        responses = spec.paths[route].post["responses"]
        ok = responses[200]
        responses.clear()
        responses[200] = ok
        for status, description in statuses.items():
            responses[status] = OpenAPIResponse(description=description, content={"application/json": error})
    if auth is not None:
        document_keys(spec, auth)
    return spec


def document_keys(spec: t.Any, auth: Auth) -> None:
    """Declare in an OpenAPI document (BentoML's, edited in place) the two ways to send a key, and the 401 of
    each route that needs one. Swagger UI then shows an Authorize button whose key it sends with each call."""
    spec.components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    error = MediaType(schema=Reference("#/components/schemas/Error"))
    unauthorized = OpenAPIResponse(
        description=f"no API key, or not one of auth.api_keys_file: {keys.HOW} (WWW-Authenticate: Bearer)",
        content={"application/json": error},
    )
    open_, prefixes = keys.open_paths(auth)
    for path, item in spec.paths.items():
        if path in open_ or path.startswith(prefixes):
            continue
        for operation in (item.get, item.post, item.put, item.delete, item.patch):
            if isinstance(operation, dict):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"][401] = unauthorized


@patches.checks(PATCH)
def check() -> None:
    """BentoML's Service still has a slotted `openapi_spec` property whose document has the shape edited above."""
    import bentoml

    if not isinstance(inspect.getattr_static(Service, "openapi_spec", None), property):
        raise patches.mismatch(PATCH, "Service.openapi_spec is no longer a property")
    if "__slots__" not in vars(Service):
        raise patches.mismatch(PATCH, "Service is no longer a slotted class")

    class Probe:
        @bentoml.api(route="/probe")
        def probe(self, x: int) -> int:
            return x

    spec = bentoml.service(Probe).openapi_spec
    responses = spec.paths["/probe"].post["responses"]
    if 200 not in responses or not isinstance(spec.components["schemas"], dict):
        raise patches.mismatch(PATCH, f"the document's /probe responses are {sorted(responses)}, with no 200")


patches.guard(check)
