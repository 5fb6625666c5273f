"""The HTTP API (`persona-agents serve`): FastAPI on uvicorn. See docs/http-api.md."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
