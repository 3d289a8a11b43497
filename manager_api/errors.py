"""Manager-only errors (subclasses of the shared hierarchy) and the one exception handler.

Every error the manager returns is ``application/problem+json`` (RFC 9457) with ``type``,
``title``, ``status`` and ``detail``; request validation errors become 422 problems that
name the offending field; anything unexpected becomes a generic 500 with a logged traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import InvalidArgumentError, ModelgateError, ResourceExhaustedError

log = logging.getLogger("manager_api.errors")

PROBLEM_JSON = "application/problem+json"


class UnauthorizedError(ModelgateError):
    """No bearer token, or one the tokens file does not know."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    title = "Unauthorized"


class ForbiddenError(ModelgateError):
    """The token's role (or groups) does not allow this operation."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    title = "Forbidden"


class PayloadTooLargeError(ResourceExhaustedError):
    """An upload is bigger than the configured limit."""

    title = "Payload too large"


class BadUploadError(InvalidArgumentError):
    """An uploaded archive or plugin package is unusable; the message says why."""

    title = "Invalid upload"


def _type_uri(title: str) -> str:
    return "https://modelgate.dev/problems/" + title.lower().replace(" ", "-")


def problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response (``headers`` kept, e.g. a 405's ``Allow``)."""
    body = {"type": _type_uri(title), "title": title, "status": status, "detail": detail}
    body.update(extra)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=all_headers)


def _describe_validation(err: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    parts: list[str] = []
    errors: list[dict[str, Any]] = []
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ())]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
        errors.append({"loc": loc, "msg": str(e.get("msg", "invalid")), "type": e.get("type")})
    return "; ".join(parts) or "invalid request", errors


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some operation of the API serves at the request's path."""
    methods: set[str] = set()
    for template, item in app.openapi()["paths"].items():
        parts = re.split(r"\{[^}]+\}", template)
        if re.fullmatch("[^/]+".join(map(re.escape, parts)), request.url.path):
            methods.update(m.upper() for m in item)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to problem+json, in this one place."""

    async def on_modelgate(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelgateError)
        if exc.http_status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        return problem(exc.http_status, exc.title, str(exc))

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail, errors = _describe_validation(exc)
        return problem(422, "Invalid argument", detail, errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = exc.headers
        if exc.status_code == 405:
            # NOTE: Starlette's Allow names the methods of the first route matching the
            # path only; a path served by several routes (GET and POST /v1/models) has more.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}
        title = titles.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        return problem(exc.status_code, title, detail, headers=headers)

    async def on_unknown(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "Internal error", "internal error; see the manager's log")

    app.add_exception_handler(ModelgateError, on_modelgate)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unknown)


# Error responses documented on every operation of the OpenAPI schema.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": title, "content": {PROBLEM_JSON: {}}}
    for status, title in (
        (400, "Malformed request body (JSON or multipart that does not parse)"),
        (401, "Missing or invalid token"),
        (403, "Role does not allow this"),
        (404, "Not found"),
        (409, "Conflict"),
        (422, "Invalid argument"),
    )
}
