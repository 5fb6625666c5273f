"""Persistent NPC state per (player, NPC), through SQLAlchemy (SQLite by default, PostgreSQL by URL)."""

from .store import ConcurrentTurnError, StateStore, StoredConversation, default_db_url

__all__ = ["ConcurrentTurnError", "StateStore", "StoredConversation", "default_db_url"]
