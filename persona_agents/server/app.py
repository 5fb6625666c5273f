"""The FastAPI application: `create_app(manager, settings)`.

Middleware, outermost first: the API key check (auth.py), the request body limit (413),
and a catch-all that turns any escaped exception into a generic 500 problem. Domain
errors become problem responses in problems.py. A lifespan starts warming up every
NPC's pipeline in a background thread; `/readyz` answers 200 once all are loaded and
the database answers. `/docs` (Swagger UI) and `/redoc` load their JS and CSS from
`/docs/static/` (the files of the fastapi-offline package), never from a CDN, so they
work offline.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import PersonaAgentsError
from ..manager import AgentManager
from .auth import ApiKeyMiddleware
from .problems import PROBLEM_MEDIA_TYPE, BodyLimitMiddleware, CatchAllMiddleware, install_problem_handlers
from .ratelimit import RateLimit, SlidingWindowLimiter
from .routes import router
from .scheduler import SchedulerSettings, TurnScheduler
from .schemas import Decision, TextPiece

logger = logging.getLogger("persona_agents.server")

DESCRIPTION = """NPC dialogue for game servers: a player's line in, the NPC's reply plus the
`deltas` and `flags` the game must apply out. Errors are `application/problem+json`.
With an API key configured, send `Authorization: Bearer <key>` or `X-API-Key: <key>`
on every request except `/healthz`."""


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    #: Turns per player in a sliding window; None: no limit.
    rate_limit: RateLimit | None = None
    max_body_bytes: int = 64 * 1024
    #: Load every NPC's pipeline at startup (in a background thread) so /readyz means it.
    warm_up: bool = True
    #: The turn pool and its per-player and global queues (scheduler.py).
    scheduler: SchedulerSettings = SchedulerSettings()


class WarmUp:
    """Warms up each NPC's pipeline in a background thread and reports progress."""

    def __init__(self, manager: AgentManager):
        self.manager = manager
        self._status = {npc: "loading" for npc in manager.npc_ids()}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="persona-agents-warm-up", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        for npc_id in list(self._status):
            try:
                self.manager.warm_up(npc_id)
                outcome, error = "ready", None
            except PersonaAgentsError as exc:
                logger.error("warm-up of NPC %s failed: %s", npc_id, exc)
                outcome, error = "error", str(exc).splitlines()[0]
            except Exception as exc:  # noqa: BLE001 - reported by /readyz, logged here
                logger.error("warm-up of NPC %s failed", npc_id, exc_info=exc)
                outcome, error = "error", f"{type(exc).__name__} (see the server log)"
            with self._lock:
                self._status[npc_id] = outcome
                if error:
                    self._errors[npc_id] = error
        logger.info("persona-agents: %d NPC pipeline(s) warmed up in %.1f s",
                    len(self._status), time.perf_counter() - started)

    def snapshot(self) -> tuple[dict[str, str], dict[str, str]]:
        with self._lock:
            return dict(self._status), dict(self._errors)

    def mark_all_ready(self) -> None:
        with self._lock:
            self._status = {npc: "ready" for npc in self._status}


def create_app(manager: AgentManager, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.warm_up:
            app.state.warmup.start()
        else:  # pipelines then load on their first turn
            app.state.warmup.mark_all_ready()
        yield

    app = FastAPI(title="persona-agents", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # served from local files by _install_docs
    app.state.manager = manager
    app.state.settings = settings
    app.state.limiter = SlidingWindowLimiter(settings.rate_limit)
    app.state.scheduler = TurnScheduler(settings.scheduler)
    app.state.warmup = WarmUp(manager)
    app.state.background_tasks = set()
    install_problem_handlers(app)
    app.include_router(router)
    _install_docs(app)
    # add_middleware wraps what is there: the last one added runs first.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


#: Swagger UI, ReDoc and a favicon, shipped by fastapi-offline; served at DOCS_STATIC_URL.
DOCS_STATIC_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_STATIC_URL = "/docs/static"  # open without a key (auth.OPEN_PREFIXES)


def _install_docs(app: FastAPI) -> None:
    """/docs, /docs/oauth2-redirect and /redoc with every asset served locally."""
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=DOCS_STATIC_DIR), name="docs-static")

    def assets(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root, f"{root}{DOCS_STATIC_URL}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root, static = assets(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{app.swagger_ui_oauth2_redirect_url}",
            swagger_js_url=f"{static}/swagger-ui-bundle.js", swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png", swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root, static = assets(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js", redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )


def _openapi(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """FastAPI's schema, with every error served as application/problem+json (Problem),
    and the API key declared when one is configured."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                readiness = path == "/readyz" and code == "503"  # a Readiness body, not a problem
                if code.isdigit() and int(code) >= 400 and not readiness:
                    # FastAPI files them under the route's media type (JSON, or SSE for the stream).
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
                for media in response.get("content", {}).values():
                    if "itemSchema" in media:  # a stream: itemSchema describes each event, not FastAPI's "string"
                        media.pop("schema", None)
            if settings.api_key and path != "/healthz":
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["TextPiece"] = TextPiece.model_json_schema()
    decision = Decision.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in decision.pop("$defs", {}).items():
        components["schemas"].setdefault(name, sub)
    components["schemas"]["Decision"] = decision  # the stream's text events
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    if settings.api_key:
        components["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    app.openapi_schema = schema
    return schema
