"""OpenAI-shaped errors: the `APIError` the server's modules raise, its JSON body, and the app's
handlers that answer every error (FastAPI's own included) in that shape."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FastAPI is imported where a response is built, so the batcher can raise APIError without it
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as OpenAI's error object; `message` says what is wrong and what to do."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type
        self.headers = headers


def error_response(status: int, message: str, *, code: str | None, param: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _api_error_response(err: APIError) -> JSONResponse:
    return error_response(err.status, err.message, code=err.code, param=err.param, type=err.type, headers=err.headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()]
    return "invalid request: " + "; ".join(parts) + "; fix these fields and retry"


_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI, routes: Sequence[str]) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_api_error(request: Request, err: APIError) -> JSONResponse:
        return _api_error_response(err)

    # FastAPI answers its own validation errors with a 422 of a different shape; OpenAI clients
    # expect their error object, and OpenAI answers a bad request with 400.
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(err), code="invalid_request")

    async def on_http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = f"{err.detail}: {request.method} {request.url.path}"
        if err.status_code == 404:
            message += f"; routes are {', '.join(routes)}"
        return error_response(err.status_code, message, code=_HTTP_CODES.get(err.status_code, "http_error"),
                              headers=getattr(err, "headers", None))

    # A safety net only: scoring failures are caught and answered where they happen.
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error ({type(err).__name__}); see the server log",
                              code="internal_error", type="server_error")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)

