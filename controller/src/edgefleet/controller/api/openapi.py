"""The OpenAPI document as the API behaves: one error shape (``ErrorBody``) on every route, the
statuses each route can answer, and which reads are open on loopback.

Routes declare their own statuses with :func:`error_responses`; :func:`install_openapi` adds the
ones every route shares because the guard in front of them answers them (Host, body size,
token before body), and swaps FastAPI's validation-error schema for ``ErrorBody``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from edgefleet.controller.api.schemas import ErrorBody

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "malformed request: an unreadable body or a bad `Content-Length`",
    401: "no credentials: send `Authorization: Bearer <token>`",
    403: "wrong API token",
    404: "no such resource",
    409: "the rollout's status, or another rollout holding its devices, forbids it",
    413: "request body over the controller's limit (setting `http_max_body_bytes`)",
    415: "the body is not of the media type the route reads",
    416: "the range is not one `bytes=<first>-[<last>]` range inside the artifact",
    421: "the `Host` header names a host this controller does not serve",
    422: "the request breaks the schema, or a rule its description states",
    503: "the controller is starting: try again in a moment",
}

# Security alternatives of a read route: none at all (on loopback), or the bearer token.
OPEN_ON_LOOPBACK: dict[str, Any] = {"security": [{}]}
LOOPBACK_NOTE = (
    "Open without credentials while the controller listens on loopback only (the default); "
    "bound beyond loopback it needs the bearer token, or the dashboard session cookie that "
    "`POST /login` sets."
)
BEARER_DESCRIPTION = (
    "The controller's API token (`EDGEFLEET_API_TOKEN`, else generated into the data dir on "
    "first start). Every state-changing call needs it."
)
API_DESCRIPTION = (
    "Devices, models, rollouts and telemetry of an edgefleet controller. Reads are open on "
    "loopback; state-changing calls need the bearer token. Every error answers "
    '`{"detail": "<reason>", "error": "<ErrorName>"}` (`ErrorBody`).'
)

_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_SAFE_METHODS = frozenset({"get", "head", "options"})
_REF = "#/components/schemas/"
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    416: {"Content-Range": {"description": "`bytes */<size>`", "schema": {"type": "string"}}},
}


def error_responses(
    *codes: int, descriptions: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status with the ``ErrorBody`` model."""
    said = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {"model": ErrorBody, "description": said[code]}
        if code in _HEADERS:
            responses[code]["headers"] = _HEADERS[code]
    return responses


def _error_response(code: int) -> dict[str, Any]:
    """One status as a raw OpenAPI response object (for routes this module only reads)."""
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}},
    }
    if code in _HEADERS:
        response["headers"] = _HEADERS[code]
    return response


def _error_schemas() -> dict[str, Any]:
    schema = ErrorBody.model_json_schema(ref_template=_REF + "{model}")
    defs = schema.pop("$defs", {})
    return {"ErrorBody": schema, **defs}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without its ``null`` alternative: a query, header or path value is
    a string or absent, never JSON ``null`` (FastAPI writes ``str | None`` as ``anyOf``)."""
    alternatives = schema.get("anyOf")
    if not isinstance(alternatives, list):
        return schema
    kept = [a for a in alternatives if a != {"type": "null"}]
    if len(kept) != 1 or len(kept) == len(alternatives):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and (k, v) != ("default", None)}
    return {**kept[0], **rest}


def _document_operation(method: str, operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if "schema" in parameter:
            parameter["schema"] = _not_null(parameter["schema"])
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in responses.items():
        for media in (response.get("content") or {}).values():
            if media.get("schema", {}).get("$ref") == _REF + "HTTPValidationError":
                media["schema"] = {"$ref": _REF + "ErrorBody"}
        if status[:1] in {"4", "5"} and not response.get("content"):  # said without a body
            response["content"] = {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}}
    shared = [400, 421]  # the guard answers these on any route
    has_input = bool(operation.get("parameters")) or "requestBody" in operation
    if "requestBody" in operation:
        shared.append(413)
    if method not in _SAFE_METHODS and operation.get("security"):
        shared += [401, 403, 503]  # the guard checks the token before it reads a body
    if has_input:
        shared.append(422)
    else:
        responses.pop("422", None)  # a router's default: nothing here can fail validation
    for code in shared:
        responses.setdefault(str(code), _error_response(code))
    if {} in operation.get("security", []):
        described = operation.get("description", "")
        if LOOPBACK_NOTE not in described:
            operation["description"] = f"{described}\n\n{LOOPBACK_NOTE}".strip()


def document_api(schema: dict[str, Any]) -> dict[str, Any]:
    """Complete a generated OpenAPI document in place (and return it): the shared statuses on
    every operation, ``ErrorBody`` for validation errors, the security model in words."""
    components = schema.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for name, definition in _error_schemas().items():
        schemas.setdefault(name, definition)
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if method in _METHODS:
                _document_operation(method, operation)
    for name in _FASTAPI_ERROR_SCHEMAS:
        definition = schemas.pop(name, None)
        if definition is not None and f'"{_REF}{name}"' in json.dumps(schema):
            schemas[name] = definition  # still referenced: keep it
    bearer = components.get("securitySchemes", {}).get("HTTPBearer")
    if bearer is not None:
        bearer.setdefault("description", BEARER_DESCRIPTION)
    info = schema.setdefault("info", {})
    info.setdefault("description", API_DESCRIPTION)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at ``/openapi.json`` (built once, on first request)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_api(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
