"""Errors in vLLM 0.33's body shape: ``{"error": {"message", "type", "param", "code"}}``.

A route that does not exist answers FastAPI's ``{"detail": "Not Found"}``, as vLLM does (clients probe routes
that way, e.g. ``/score`` on a model that cannot score).

Every client mistake becomes a 4xx with a message that names the field and the limit; only a fault of the
server itself is a 500, and its message never carries a traceback or a secret.

A 4xx caused by a :class:`~rlhf_rewards.errors.RequestError` also carries the error's structure in the
header :data:`ERROR_HEADER` (``json.dumps(err.to_dict())``), located as the message reports it: ``field`` is
the request's field (``input``, ``query``, ``messages``, ``task``...) and ``index`` the entry of that
request. A client that split its own call into requests (``RemoteWorker``) moves the error back to its
caller's index with :meth:`~rlhf_rewards.errors.RequestError.located`, never parsing the message.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf_rewards.errors import ERROR_HEADER, RequestError
from rlhf_rewards.server.base.protocol import ErrorInfo, ErrorResponse, ParamValueError, RequestRefused

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
#: Most validation errors named in one message (the rest are counted).
_MAX_ERRORS_SHOWN = 5
_OWN_PARAM: Any = object()


class APIError(Exception):
    """An error answered to the client as-is.

    Args:
        status: HTTP status code.
        message: Human-readable message; names the field and the limit.
        param: The request field at fault, if any.
        headers: Extra response headers (e.g. ``Retry-After``).
        error: The structured error behind it, sent in :data:`ERROR_HEADER`.
        error_type: The body's ``type`` when it is not the status's (:data:`ERROR_TYPES`), e.g. vLLM's
            ``"Bad Request"`` of a schema error.
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        error: RequestError | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers
        self.error = error

    @classmethod
    def from_request_error(
        cls, error: RequestError, *, param: str | None = _OWN_PARAM, status: int = 400
    ) -> APIError:
        """The answer to ``error`` (already located under the request's field names): its message, its
        ``param`` unless ``param`` is given, and its structure in :data:`ERROR_HEADER`."""
        return cls(status, error.message, error.param if param is _OWN_PARAM else param, error=error)

    def response_headers(self) -> dict[str, str] | None:
        """``headers`` plus :data:`ERROR_HEADER` when a structured error is behind this one."""
        if self.error is None:
            return self.headers
        return {**(self.headers or {}), **request_error_headers(self.error)}


def request_error_headers(error: RequestError) -> dict[str, str]:
    """``{ERROR_HEADER: json}`` for ``error`` (ASCII JSON, so it is a valid header value)."""
    return {ERROR_HEADER: json.dumps(error.to_dict())}


def error_body(
    status: int, message: str, param: str | None = None, *, error_type: str | None = None
) -> dict[str, Any]:
    """vLLM's ``ErrorResponse`` as a dict (``type`` from :data:`ERROR_TYPES` unless ``error_type`` is given)."""
    return ErrorResponse(
        error=ErrorInfo(
            message=message,
            type=error_type or ERROR_TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "") + "Error"),
            param=param,
            code=status,
        )
    ).model_dump(mode="json")


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    error_type: str | None = None,
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(
        error_body(status, message, param, error_type=error_type), status_code=status, headers=headers
    )


def error_bytes(status: int, message: str, param: str | None = None) -> bytes:
    """The error body encoded, for ASGI middlewares that answer before the app runs."""
    return json.dumps(error_body(status, message, param)).encode()


_BRACKETED = re.compile(r"[\[\]{}()]")
#: pydantic-core's schema-kind tags that appear in an error's ``loc`` (vLLM's ``_INTERNAL_LOC_MARKERS``).
_INTERNAL_LOC_MARKERS = frozenset(
    {
        "function-wrap",
        "function-after",
        "function-before",
        "function-plain",
        "json-or-python",
        "lax-or-strict",
        "chain",
        "default",
        "nullable",
        "tagged-union",
        "union",
        "call",
        "arguments",
        "is-instance",
        "is-subclass",
        "callable",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "bytearray",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "complex",
        "none",
        "nonetype",
    }
)


def _internal(segment: str) -> bool:
    return bool(_BRACKETED.search(segment)) or segment.lower() in _INTERNAL_LOC_MARKERS


def clean_loc(loc: tuple[Any, ...]) -> str:
    """A pydantic ``loc`` as vLLM reports it in ``param``: dotted, union/validator tags dropped
    (``("body", "input", "list[int]", 0)`` -> ``"body.input.0"``)."""
    parts = [str(p) for p in loc if not _internal(str(p))]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def validation_param(errors: list[dict[str, Any]]) -> str | None:
    """vLLM's ``param`` of a validation error: a validator's named parameter, else the first error's location."""
    for e in errors:
        ctx_error = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ParamValueError):
            return ctx_error.parameter
    if errors and errors[0].get("loc"):
        return clean_loc(tuple(errors[0]["loc"]))
    return None


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and _internal(p):
            continue  # union-member tags pydantic adds (``list[int]``...), not field names
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def describe_validation_errors(
    errors: list[dict[str, Any]], content_type: str | None
) -> tuple[str, str | None]:
    """One readable message (and vLLM's ``param``) from pydantic's error list; never echoes large input values."""
    param = validation_param(errors)
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (err.get("ctx") or {}).get("error", "malformed")
        return f"The request body is not valid JSON ({reason}).", param
    if content_type is not None and "json" not in content_type.lower():
        return (
            f"The request body must be JSON sent with 'Content-Type: application/json' "
            f"(got Content-Type {content_type!r})."
        ), param
    messages: list[str] = []
    body_level = False
    seen: set[str] = set()
    for e in errors:
        field = _field_name(tuple(e.get("loc", ())))
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if e.get("type") == "missing" and not field:
            msg, body_level = "The request body is empty; send a JSON object.", True
        elif e.get("type") == "model_attributes_type" and not field:
            msg, body_level = "The request body must be a JSON object.", True
        elif e.get("type") == "extra_forbidden":
            msg = f"unknown field `{field}` (not part of this route's schema)"
        elif e.get("type") == "literal_error":
            # vLLM's message carries the error type and the value sent (clients and vLLM's tests read both);
            # the value is a short scalar here, never a large input.
            got = e.get("input")
            sent = repr(got[:40]) if isinstance(got, str) else type(got).__name__
            msg = f"`{field}`: {msg} (literal_error; got {sent})"
        else:
            msg = f"`{field}`: {msg}" if field else msg
        if msg in seen:
            continue
        seen.add(msg)
        messages.append(msg)
    shown = messages[:_MAX_ERRORS_SHOWN]
    more = f" (and {len(messages) - len(shown)} more)" if len(messages) > len(shown) else ""
    prefix = "" if body_level and len(shown) == 1 else "Invalid request: "
    return prefix + "; ".join(shown) + more, param


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to vLLM's error shape: 4xx for client mistakes, 500 only for server faults."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, exc.param, exc.response_headers(), error_type=exc.error_type
        )

    @app.exception_handler(RequestRefused)
    async def _refused(_request: Request, exc: RequestRefused) -> JSONResponse:
        return error_response(400, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM's validation answer: type "Bad Request" (the status phrase), param "body.<field>" (the first
        # error's location, or the parameter a validator names); the message is this server's, naming the field.
        errors = list(exc.errors())
        message, _ = describe_validation_errors(errors, request.headers.get("content-type"))
        content_type = (
            (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
        )
        # vLLM refuses another media type before reading the body, naming no field.
        param = (
            _schema_param(request, errors, getattr(exc, "body", None))
            if content_type == "application/json"
            else None
        )
        return error_response(400, message, param, error_type=HTTPStatus.BAD_REQUEST.phrase)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code in (404, 405):
            # Starlette's own answers, as vLLM gives them (``{"detail": "Not Found"}``, ``{"detail": "Method Not
            # Allowed"}``; vLLM's tests read ``["detail"] == "Not Found"``).
            return JSONResponse(
                {"detail": HTTPStatus(exc.status_code).phrase}, status_code=exc.status_code, headers=headers
            )
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "The request body could not be decoded: send UTF-8 encoded JSON."
        # vLLM's HTTPException handler: ``type`` is the status phrase.
        return error_response(
            exc.status_code, detail, headers=headers, error_type=HTTPStatus(exc.status_code).phrase
        )

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        if isinstance(exc, pydantic.ValidationError):
            # Requests are validated before a route runs (RequestValidationError): this is a response
            # model the server itself failed to build.
            return _internal_error(request, exc)
        # The engine validates inputs and raises ValueError for anything the client got wrong.
        headers = request_error_headers(exc) if isinstance(exc, RequestError) else None
        return error_response(400, str(exc), headers=headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)


#: The request field that vLLM's completion form requires, per route (vLLM validates a union of its completion
#: form and chat form; with neither field sent, or a chat-form mistake, its first error is the missing field).
_COMPLETION_FIELD = {
    "/pooling": "input",
    "/classify": "input",
    "/v1/embeddings": "input",
    "/tokenize": "prompt",
}
#: Fields that come before the completion field in vLLM's schemas (their errors are reported first).
_COMMON_FIELDS = frozenset(
    {
        "model",
        "user",
        "truncate_prompt_tokens",
        "padding",
        "truncation_side",
        "request_id",
        "priority",
        "mm_processor_kwargs",
        "cache_salt",
    }
)


def _schema_param(request: Request, errors: list[dict[str, Any]], body: Any) -> str | None:
    """vLLM's ``param`` for a validation error of this request: the first error's location, except that on a
    route whose schema is vLLM's completion|chat union a body without the completion field reports it missing
    first (unless a common field, checked before it, is at fault)."""
    param = validation_param(errors)
    name = _COMPLETION_FIELD.get(request.url.path)
    if name is None or not isinstance(body, dict) or name in body or not errors:
        return param
    if any(isinstance((e.get("ctx") or {}).get("error"), ParamValueError) for e in errors):
        return param
    loc = [str(p) for p in errors[0].get("loc", ()) if not _internal(str(p))]
    if len(loc) >= 2 and loc[0] == "body" and loc[1] in _COMMON_FIELDS:
        return param
    return f"body.{name}"


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logging.getLogger("rlhf_rewards.server").error(
        "Internal error on %s %s", request.method, request.url.path, exc_info=exc
    )
    return error_response(500, f"Internal server error ({type(exc).__name__}); see the server log.")


__all__ = [
    "ERROR_HEADER",
    "APIError",
    "clean_loc",
    "validation_param",
    "describe_validation_errors",
    "error_body",
    "error_bytes",
    "error_response",
    "install_error_handlers",
    "request_error_headers",
]
