"""Errors as RFC 7807 problem responses (`application/problem+json`).

Every error the server sends has `type`, `title`, `status`, `detail` and a short `code`;
a request problem also names the bad `field`. Status codes:

- 401 `unauthorized`: missing or wrong API key (persona_agents.server.auth).
- 404 `unknown_npc` (with `available`), `not_found` (no such route).
- 405 `method_not_allowed`.
- 409 `concurrent_turn`: another process kept winning the race for this (player, NPC); retry.
  409 `request_id_conflict` (field `request_id`): the request_id was already used for this
  (player, NPC) with a different request; send a new request_id.
- 413 `request_too_large`: the request body is larger than the server accepts.
- 422 `invalid_request` (the body, path or query does not match the schema; `errors`
  lists every problem) and `input_rejected` (the NPC's pipeline refused the input, e.g.
  an utterance over the persona's `normalize_input.max_chars`). A too long utterance is
  always 422 naming `utterance`, whichever limit it broke.
- 422 `input_rejected` also for a request over the NPC's `request_budget` (a value or list
  that would fill too much of the prompt, counted in the model's tokens; `field` names it).
- 429 `rate_limited`, and `player_busy` (the player already has as many turns running and
  queued as the server allows), each with `Retry-After` in seconds.
- 503 `model_unavailable`, `database_unavailable`, and `server_busy` (the turn queue is
  full; `Retry-After`).
- 500 `internal_error`: a generic message; the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    InputError,
    MemoryNotFoundError,
    ModelLoadError,
    PersonaAgentsError,
    RequestIdConflictError,
    UnknownNpcError,
)
from ..store import ConcurrentTurnError
from ..store.store import StoreError
from .ratelimit import RateLimited
from .scheduler import PlayerBusy, ServerBusy

PROBLEM_MEDIA_TYPE = "application/problem+json"
logger = logging.getLogger("persona_agents.server")


class FieldProblem(BaseModel):
    field: str = Field(description="Where: a dotted path into the body (`items.0`), or `path.npc_id`.")
    message: str
    type: str = Field(description="The validation error's type, e.g. string_too_long.")


class Problem(BaseModel):
    """An error (RFC 7807)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URN naming the kind of problem.")
    title: str
    status: int
    detail: str = Field(description="What went wrong and how to fix it; names the field where there is one.")
    code: str = Field(description="Short machine-readable kind: unknown_npc, invalid_request, rate_limited...")
    instance: str | None = Field(None, description="The request path.")
    field: str | None = Field(None, description="The bad field, where one is to blame.")
    errors: list[FieldProblem] | None = None
    available: list[str] | None = Field(None, description="Valid choices (the NPC ids, for unknown_npc).")


def problem_body(status: int, code: str, detail: str, instance: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"type": f"urn:persona-agents:problem:{code.replace('_', '-')}", "title": HTTPStatus(status).phrase,
            "status": status, "detail": detail, "code": code}
    if instance is not None:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(status: int, code: str, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, code, detail, instance, **extra), status_code=status,
                        headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'context', 'items', 0) -> 'context.items.0'; path and query keep their prefix."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def describe_exception(exc: BaseException, instance: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, problem body, headers) for an exception raised while serving a request.

    Shared by the exception handlers and the SSE stream's `event: error`. Unexpected
    exceptions are logged with their traceback and answered with a generic message.
    """
    if isinstance(exc, UnknownNpcError):
        # Not str(exc): that names the server's NPC folder, which is none of the client's business.
        detail = f"npc_id: Unknown NPC '{exc.npc_id}'. Available: {', '.join(exc.available) or '(none)'}."
        return 404, problem_body(404, "unknown_npc", detail, instance, field="npc_id", available=exc.available), {}
    if isinstance(exc, MemoryNotFoundError):
        return 404, problem_body(404, "memory_not_found", str(exc), instance, field=exc.field), {}
    if isinstance(exc, InputError):
        return 422, problem_body(422, "input_rejected", str(exc), instance, field=exc.field), {}
    if isinstance(exc, RateLimited):
        detail = (f"{exc.field}: '{exc.key}' is over the limit of {exc.limit} turns; wait {exc.retry_after} s "
                  "(Retry-After) before the next one.")
        return (429, problem_body(429, "rate_limited", detail, instance, field=exc.field),
                {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, PlayerBusy):
        detail = (f"{exc.field}: '{exc.key}' already has {exc.limit} turns running or queued; their turns run one "
                  f"after another. Wait for an answer (Retry-After: {exc.retry_after} s) before sending more.")
        return (429, problem_body(429, "player_busy", detail, instance, field=exc.field),
                {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ServerBusy):
        detail = (f"The server is busy: {exc.waiting} turns are waiting for a worker. Retry after "
                  f"{exc.retry_after} s (Retry-After).")
        return 503, problem_body(503, "server_busy", detail, instance), {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, RequestIdConflictError):
        return 409, problem_body(409, "request_id_conflict", str(exc), instance, field=exc.field), {}
    if isinstance(exc, ConcurrentTurnError):
        detail = "Another server process kept committing turns for this player and NPC first; retry the request."
        return 409, problem_body(409, "concurrent_turn", detail, instance), {}
    if isinstance(exc, StoreError):
        logger.error("state database error on %s: %s", instance, exc)
        return 503, problem_body(503, "database_unavailable", "The state database is unavailable; "
                                 "see the server log.", instance), {}
    if isinstance(exc, ModelLoadError):
        logger.error("model could not be loaded on %s: %s", instance, exc)
        return 503, problem_body(503, "model_unavailable", "The NPC's model could not be loaded; "
                                 "see the server log.", instance), {}
    if isinstance(exc, PersonaAgentsError):
        logger.error("turn failed on %s: %s", instance, exc, exc_info=exc)
    else:
        logger.error("unexpected error on %s", instance, exc_info=exc)
    return 500, problem_body(500, "internal_error", "The server could not complete the request; "
                             "the details are in the server log.", instance), {}


def _exception_response(request: Request, exc: BaseException) -> JSONResponse:
    status, body, headers = describe_exception(exc, request.url.path)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        field, message = field_path(e.get("loc", ())), e.get("msg", "invalid")
        if e.get("type") == "json_invalid":  # loc is ('body', character offset)
            field, message = "body", f"{message} at character {field}"
        errors.append({"field": field, "message": message, "type": e.get("type", "")})
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    more = f" (and {len(errors) - 1} more problem(s), see errors)" if len(errors) > 1 else ""
    return problem_response(422, "invalid_request", f"{first['field']}: {first['message']}{more}",
                            request.url.path, field=first["field"], errors=errors)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI could not read the body at all (e.g. not UTF-8): an invalid body
        message = "could not be parsed as JSON (send UTF-8 JSON)"
        return problem_response(422, "invalid_request", f"body: {message}", request.url.path, field="body",
                                errors=[{"field": "body", "message": message, "type": "body_unreadable"}])
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"No route {request.method} {request.url.path}; see /docs for the API."
    return problem_response(exc.status_code, code, detail, request.url.path, headers=getattr(exc, "headers", None))


async def _domain_handler(request: Request, exc: Exception) -> JSONResponse:
    return _exception_response(request, exc)


def install_problem_handlers(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of these is registered for its own class.
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_handler)  # type: ignore[arg-type]
    app.add_exception_handler(PersonaAgentsError, _domain_handler)
    app.add_exception_handler(RateLimited, _domain_handler)


class CatchAllMiddleware:
    """Any exception that escapes a route becomes a generic 500 problem; never a traceback.

    Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass straight through.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            status, body, headers = describe_exception(exc, scope.get("path"))
            if started:  # too late for a status; the client sees a cut connection
                return
            response = JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """413 problem for a request body over `max_bytes` (by Content-Length, or as it streams in)."""

    class _TooLarge(StarletteHTTPException):
        # An HTTPException, so that FastAPI's body reader passes it on to the 413 handler.
        def __init__(self, max_bytes: int):
            super().__init__(413, f"The request body is larger than {max_bytes} bytes; send a shorter request.")

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _reject(self, scope: Scope) -> JSONResponse:
        return problem_response(413, "request_too_large",
                                f"The request body is larger than {self.max_bytes} bytes; send a shorter request.",
                                scope.get("path"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(scope)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except self._TooLarge:
            if not started:
                await self._reject(scope)(scope, receive, send)
