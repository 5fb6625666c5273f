"""Schema migrations: an ordered list of steps, applied once each, recorded in
`pa_schema_version`. A database newer than this code is refused rather than guessed at.

To change the schema: edit schema.py, then append a function here that brings a
database from the previous version to the new one (ALTER TABLE ... through
`connection.execute(text(...))`, or `Table.create` for new tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, cast

from sqlalchemy import Connection, Engine, Table, inspect, select, text

from ..errors import PersonaAgentsError
from .schema import (
    Base,
    FlagEventRow,
    HistoryRow,
    MemoryRow,
    NpcStateRow,
    SceneLineRow,
    SchemaVersion,
    TurnRecordRow,
)


def _table(row: type[Base]) -> Table:
    """A mapped class's Table (SQLAlchemy types `__table__` as the wider FromClause)."""
    return cast(Table, row.__table__)


def _v1_initial(connection: Connection) -> None:
    for table in (NpcStateRow, HistoryRow, FlagEventRow, TurnRecordRow):
        _table(table).create(connection, checkfirst=True)


def _v2_memories(connection: Connection) -> None:
    _table(MemoryRow).create(connection, checkfirst=True)


def _v3_scene_lines(connection: Connection) -> None:
    _table(SceneLineRow).create(connection, checkfirst=True)


def _v4_state_axes(connection: Connection) -> None:
    # A database made at version 1-3 lacks the column; one made now has it from _v1_initial.
    columns = {column["name"] for column in inspect(connection).get_columns(NpcStateRow.__tablename__)}
    if "axes" not in columns:
        connection.execute(text(f"ALTER TABLE {NpcStateRow.__tablename__} ADD COLUMN axes JSON"))


#: (version, what it does, how). Append only.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial tables: state, history, flag events, turn records", _v1_initial),
    (2, "long-term memories per (player, NPC)", _v2_memories),
    (3, "group scenes: the lines each NPC present heard", _v3_scene_lines),
    (4, "the game's extra state axes in each NPC's state", _v4_state_axes),
]
CURRENT_VERSION = MIGRATIONS[-1][0]


class SchemaVersionError(PersonaAgentsError):
    pass


def current_version(connection: Connection) -> int:
    if not inspect(connection).has_table(SchemaVersion.__tablename__):
        return 0
    row = connection.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).first()
    return row[0] if row else 0


#: The PostgreSQL advisory lock that serialises schema upgrades (any constant will do).
_UPGRADE_LOCK = 7_271_000_128


def upgrade(engine: Engine, url_for_messages: str) -> int:
    """Bring the database to CURRENT_VERSION in one transaction; returns the version.
    Processes that open a fresh database at once (replicas starting together) take turns:
    the first creates the tables, the others find them (without it, "table already
    exists" or a duplicate version row failed 30 of 40 of them on PostgreSQL)."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        from ..fileutil import file_lock

        with file_lock(Path(f"{engine.url.database}.upgrade.lock").expanduser()):
            return _upgrade(engine, url_for_messages)
    return _upgrade(engine, url_for_messages)


def _upgrade(engine: Engine, url_for_messages: str) -> int:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        _table(SchemaVersion).create(connection, checkfirst=True)
        version = current_version(connection)
        if version > CURRENT_VERSION:
            raise SchemaVersionError(
                f"The state database {url_for_messages} has schema version {version}, newer than this "
                f"persona-agents understands ({CURRENT_VERSION}). Upgrade persona-agents, or use another --db."
            )
        for number, _, apply in MIGRATIONS:
            if number > version:
                apply(connection)
        if version == 0:
            connection.execute(_table(SchemaVersion).insert().values(id=1, version=CURRENT_VERSION))
        elif version < CURRENT_VERSION:
            connection.execute(_table(SchemaVersion).update().where(SchemaVersion.id == 1)
                               .values(version=CURRENT_VERSION))
    return CURRENT_VERSION


__all__ = ["Base", "CURRENT_VERSION", "MIGRATIONS", "SchemaVersionError", "upgrade"]
