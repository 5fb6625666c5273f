"""The HTTP API (`persona-agents serve`): FastAPI on uvicorn. See README, "The HTTP API"."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
