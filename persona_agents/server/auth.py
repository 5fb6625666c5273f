"""API key check: `Authorization: Bearer KEY` or `X-API-Key: KEY`.

With a key configured, every request needs it except the liveness probe (`/healthz`)
and the API's own documentation (`/openapi.json`, `/docs`, `/redoc`), which describe the
API but reveal nothing of its NPCs or players. Without a key (loopback only; `serve`
refuses anything else) every request is allowed. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import problem_response

API_KEY_ENV = "PERSONA_AGENTS_API_KEY"
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None


class ApiKeyMiddleware:
    """401 problem unless the request carries the configured key."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        key = presented_key(headers)
        if key is not None and hmac.compare_digest(key.encode("utf-8"), self._key):
            return await self.app(scope, receive, send)
        detail = ("Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'." if key is None
                  else "Wrong API key.")
        response = problem_response(401, "unauthorized", detail, scope["path"],
                                    headers={"WWW-Authenticate": 'Bearer realm="persona-agents"'})
        await response(scope, receive, send)
