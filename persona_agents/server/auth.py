"""API key check: `Authorization: Bearer KEY` or `X-API-Key: KEY`.

With a key configured, every request needs it except the liveness probe (`/healthz`)
and the API's own documentation (`/openapi.json`, `/docs` and its local assets under
`/docs/static/`, `/redoc`), which describe the API but reveal nothing of its NPCs or
players. Without a key (loopback only; `serve` refuses anything else) every request is
allowed. Keys are compared as bytes, in constant time: the header's raw bytes against
the configured key encoded as UTF-8, so a non-ASCII key works when sent as UTF-8.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import problem_response

OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: Path prefixes open like OPEN_PATHS: the documentation pages' own JS and CSS.
OPEN_PREFIXES = ("/docs/static/",)
#: What HTTP calls whitespace around a header value (not Unicode's: the bytes may be UTF-8).
_HTTP_SPACE = b" \t"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key_bytes(headers: dict[bytes, bytes]) -> bytes | None:
    """The key's raw bytes from `Authorization: Bearer KEY` or `X-API-Key: KEY`, else None."""
    auth = headers.get(b"authorization")
    if auth:
        scheme, _, token = auth.strip(_HTTP_SPACE).partition(b" ")
        token = token.strip(_HTTP_SPACE)
        if scheme.lower() == b"bearer" and token:
            return token
    key = headers.get(b"x-api-key")
    return key.strip(_HTTP_SPACE) if key else None


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The presented key as text (UTF-8); the check itself compares bytes (presented_key_bytes)."""
    key = presented_key_bytes(headers)
    return None if key is None else key.decode("utf-8", "replace")


class ApiKeyMiddleware:
    """401 problem unless the request carries the configured key."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        key = presented_key_bytes(headers)
        if key is not None and hmac.compare_digest(key, self._key):
            return await self.app(scope, receive, send)
        detail = ("Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'." if key is None
                  else "Wrong API key.")
        response = problem_response(401, "unauthorized", detail, scope["path"],
                                    headers={"WWW-Authenticate": 'Bearer realm="persona-agents"'})
        await response(scope, receive, send)
