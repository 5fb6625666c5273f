"""The state store: load a conversation, commit a turn atomically, replay a request.

One turn is one transaction: the state row, the history line, the fired flags and the
turn record are written together or not at all. The state row carries a version; a
commit names the version it started from, so two processes (server replicas on one
PostgreSQL) can never both apply a turn on the same state: the loser gets
ConcurrentTurnError and re-runs its turn on the new state. Within one process the
manager orders turns per (player, NPC) with a lock, so that never costs a model run.

A group scene's turn (`commit_scene_turn`) writes every speaking NPC's turn, and the
lines each NPC present heard (`pa_scene_line`), in one transaction.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..errors import PersonaAgentsError
from ..models import cache_dir
from ..turn import Deltas, Exchange, Memory, NpcState
from .migrations import upgrade
from .schema import FlagEventRow, HistoryRow, MemoryRow, NpcStateRow, SceneLineRow, TurnRecordRow

DB_ENV = "PERSONA_AGENTS_DB"
#: Earlier turns whose deltas a load returns: the longest delta_policy window allowed.
DELTA_HISTORY_TURNS = 100
#: Memories a turn loads (the newest); older ones stay stored, visible to the game.
MEMORY_LIMIT = 200


def default_db_url() -> str:
    """$PERSONA_AGENTS_DB, else a SQLite file in the cache folder."""
    import os

    return os.environ.get(DB_ENV) or f"sqlite:///{cache_dir() / 'state.db'}"


class ConcurrentTurnError(PersonaAgentsError):
    """Another process committed a turn for this (player, NPC) first."""


class DuplicateRequestError(PersonaAgentsError):
    """A turn with this request_id was committed meanwhile."""


class StoreError(PersonaAgentsError):
    """The state database cannot be opened or used (the server answers 503)."""


def _database_errors(what: str):
    """Method decorator: a database failure becomes a StoreError naming `what` failed and
    the database without its password, never a traceback with SQL and player data."""
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except SQLAlchemyError as exc:
                raise StoreError(f"Could not {what} in {self.safe_url}: {_reason(exc)}") from exc
        return run
    return wrap


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's one-line reason (SQLAlchemy's own message appends the SQL and its
    parameters: player data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"


@dataclass(frozen=True)
class StoredConversation:
    state: NpcState
    history: tuple[Exchange, ...]
    #: flag name -> turn numbers at which it fired, oldest first.
    flag_history: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    turns: int = 0
    version: int = 0
    #: Deltas applied on the latest turns (up to DELTA_HISTORY_TURNS), oldest first.
    delta_history: tuple[Deltas, ...] = ()
    #: Long-term memories (up to MEMORY_LIMIT, the newest), oldest first.
    memories: tuple[Memory, ...] = ()


@dataclass(frozen=True)
class TurnWrite:
    """Everything one NPC's turn writes (`commit_turn`'s arguments in one value)."""

    player_id: str
    npc_id: str
    expected_version: int
    state: NpcState
    turn_number: int
    exchange: Exchange
    fired: tuple[tuple[str, Mapping[str, Any]], ...]
    request: Mapping[str, Any]
    response: Mapping[str, Any]
    request_id: str | None = None
    memories: tuple[Memory, ...] = ()
    #: Word sent to other NPCs: (npc_id, memory, delay in the player's turns).
    heard: tuple[tuple[str, Memory, int], ...] = ()


@dataclass(frozen=True)
class SceneLine:
    """One NPC's line in a scene turn and the NPCs present who heard it (itself included)."""

    position: int
    speaker: str
    speaker_name: str
    player_text: str
    text: str
    listeners: tuple[str, ...]


@dataclass(frozen=True)
class HeardLine:
    """A scene line as a listener heard it: which player's line it answered, who said what."""

    player_id: str
    player_text: str
    speaker: str
    speaker_name: str
    text: str


@dataclass(frozen=True)
class SceneView:
    """What one NPC heard of a scene (the newest lines, oldest first), and its own turn count
    with the player when it first heard this player there (None: never): its conversation
    with the player up to that turn comes before the scene."""

    lines: tuple[HeardLine, ...] = ()
    since_turn: int | None = None


@dataclass(frozen=True)
class SceneStatus:
    """The next scene turn number of (scene, player), and for each NPC when it last spoke
    in the scene (a growing number; absent: never), with the players present."""

    next_turn: int
    last_spoke: Mapping[str, int]


#: SQLite's `synchronous` levels a URL may ask for (`sqlite:///state.db?synchronous=full`).
#: NORMAL (the default) in WAL mode never corrupts the database, but a power loss or an
#: OS crash (not a crash of the process) can lose the last turns committed before it;
#: FULL syncs every commit to disk, so none is lost, at some cost per turn.
SQLITE_SYNCHRONOUS = ("normal", "full")


def _sqlite_pragmas(synchronous: str):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")  # one of SQLITE_SYNCHRONOUS
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
    return on_connect


def _sqlite_synchronous(parsed) -> tuple[str, object]:
    """The `synchronous` level a SQLite URL asks for, and the URL without it (the
    parameter is ours, not the driver's)."""
    level = str(parsed.query.get("synchronous", "normal")).lower()
    if level not in SQLITE_SYNCHRONOUS:
        raise StoreError(f"The database URL's synchronous={parsed.query.get('synchronous')!r} is not a level "
                         f"this store offers. Choose one of: {', '.join(SQLITE_SYNCHRONOUS)} "
                         "(e.g. sqlite:///state.db?synchronous=full).")
    return level, parsed.difference_update_query(["synchronous"])


def _stored_axes(stored: Mapping[str, Any] | None, initial: Mapping[str, float]) -> dict[str, float]:
    """The extra axes the game declares now (`initial`'s keys): stored values where there
    are some, the initial value of an axis the game added since; axes it dropped are gone."""
    stored = stored or {}
    return {name: float(stored.get(name, value)) for name, value in initial.items()}


class StateStore:
    def __init__(self, url: str | None = None):
        self.url = url or default_db_url()
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise StoreError("Invalid database URL: it is not of the form dialect+driver://user:password@host/db. "
                             "Use sqlite:///path/to/state.db or postgresql+psycopg://...") from exc
        #: The URL as logs and errors show it: never the password.
        self.safe_url = parsed.render_as_string(hide_password=True)
        self._memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
        self._serial = threading.Lock() if self._memory else contextlib.nullcontext()
        try:
            self.engine = self._make_engine(parsed)
        except (ImportError, NoSuchModuleError) as exc:
            extra = " (pip install 'persona-agents[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
            raise StoreError(f"The database driver of {self.safe_url} is not installed: {exc}{extra}. Supported: "
                             "sqlite:///path/to/state.db, postgresql+psycopg://user:password@host/db.") from exc
        try:
            upgrade(self.engine, self.safe_url)
        except SQLAlchemyError as exc:
            raise StoreError(f"Cannot open the state database {self.safe_url}: {_reason(exc)}") from exc

    @classmethod
    def in_memory(cls) -> "StateStore":
        """A store that lives as long as the process (conversations without --player)."""
        return cls("sqlite://")

    def _make_engine(self, parsed) -> Engine:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
        synchronous, parsed = _sqlite_synchronous(parsed)
        if self._memory:
            engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
        return engine

    # -- reading -----------------------------------------------------------------------
    @_database_errors('read the conversation')
    def load(self, player_id: str, npc_id: str, initial: NpcState,
             history_limit: int | None = 50) -> StoredConversation:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(
                select(NpcStateRow.__table__).where(NpcStateRow.player_id == player_id, NpcStateRow.npc_id == npc_id)
            ).mappings().first()
            if row is None:  # never talked; it may have heard of the player from other NPCs
                return StoredConversation(state=initial, history=(),
                                          memories=self._memories(conn, player_id, npc_id, MEMORY_LIMIT))
            query = (
                select(HistoryRow.player_text, HistoryRow.npc_text)
                .where(HistoryRow.player_id == player_id, HistoryRow.npc_id == npc_id)
                .order_by(HistoryRow.turn_number.desc())
            )
            if history_limit is not None:
                query = query.limit(history_limit)
            history = tuple(Exchange(p, n) for p, n in reversed(conn.execute(query).all()))
            flags: dict[str, list[int]] = {}
            for flag, number in conn.execute(
                select(FlagEventRow.flag, FlagEventRow.turn_number)
                .where(FlagEventRow.player_id == player_id, FlagEventRow.npc_id == npc_id)
                .order_by(FlagEventRow.turn_number)
            ):
                flags.setdefault(flag, []).append(number)
            deltas = conn.execute(
                select(TurnRecordRow.delta_trust, TurnRecordRow.delta_relationship)
                .where(TurnRecordRow.player_id == player_id, TurnRecordRow.npc_id == npc_id)
                .order_by(TurnRecordRow.turn_number.desc())
                .limit(DELTA_HISTORY_TURNS)
            ).all()
            memories = self._memories(conn, player_id, npc_id, MEMORY_LIMIT)
        state = NpcState(row["trust"], row["relationship"], row["mood"], row["quest_stage"],
                         _stored_axes(row.get("axes"), initial.axes))
        return StoredConversation(
            state=state,
            history=history,
            flag_history=MappingProxyType({k: tuple(v) for k, v in flags.items()}),
            turns=row["turns"],
            version=row["version"],
            delta_history=tuple(Deltas(t, r) for t, r in reversed(deltas)),
            memories=memories,
        )

    @staticmethod
    def _played(conn, player_id: str) -> int:
        """How many turns the player has played, with every NPC together."""
        return conn.execute(select(func.count()).select_from(TurnRecordRow)
                            .where(TurnRecordRow.player_id == player_id)).scalar_one()

    @classmethod
    def _memories(cls, conn, player_id: str, npc_id: str, limit: int | None,
                  arrived_only: bool = True) -> tuple[Memory, ...]:
        """The NPC's memories of the player, oldest first; word still on its way is left
        out unless `arrived_only` is False (the game's own view shows it)."""
        cond = [MemoryRow.player_id == player_id, MemoryRow.npc_id == npc_id]
        if arrived_only:
            cond.append(MemoryRow.visible_from <= cls._played(conn, player_id))
        query = (select(MemoryRow.id, MemoryRow.turn_number, MemoryRow.kind, MemoryRow.text, MemoryRow.source,
                        MemoryRow.visible_from)
                 .where(*cond).order_by(MemoryRow.turn_number.desc(), MemoryRow.id.desc()))
        if limit is not None:
            query = query.limit(limit)
        return tuple(Memory(*row) for row in reversed(conn.execute(query).all()))

    @_database_errors('read the memories')
    def memories(self, player_id: str, npc_id: str) -> tuple[Memory, ...]:
        """Every memory an NPC holds about a player, oldest first, word still on its way too."""
        with self._serial, self.engine.connect() as conn:
            return self._memories(conn, player_id, npc_id, None, arrived_only=False)

    @_database_errors('forget memories')
    def forget(self, player_id: str, npc_id: str, memory_id: int | None = None) -> int:
        """Delete one memory (by id) or all of an NPC's memories of a player; returns how many."""
        cond = [MemoryRow.player_id == player_id, MemoryRow.npc_id == npc_id]
        if memory_id is not None:
            cond.append(MemoryRow.id == memory_id)
        with self._serial, self.engine.begin() as conn:
            return conn.execute(delete(MemoryRow).where(*cond)).rowcount

    @_database_errors('read a stored response')
    def find_response(self, player_id: str, npc_id: str, request_id: str) -> dict[str, Any] | None:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(
                select(TurnRecordRow.response).where(
                    TurnRecordRow.player_id == player_id,
                    TurnRecordRow.npc_id == npc_id,
                    TurnRecordRow.request_id == request_id,
                )
            ).first()
        return row[0] if row else None

    @_database_errors('read a stored request')
    def find_request_and_response(
        self, player_id: str, npc_id: str, request_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(stored request record, stored response) of a request_id, or None: lets a repeat be
        told apart from a different request that reuses the id."""
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(
                select(TurnRecordRow.request, TurnRecordRow.response).where(
                    TurnRecordRow.player_id == player_id,
                    TurnRecordRow.npc_id == npc_id,
                    TurnRecordRow.request_id == request_id,
                )
            ).first()
        return (dict(row[0] or {}), row[1]) if row else None

    # -- group scenes ------------------------------------------------------------------
    @_database_errors('read the scene')
    def scene_view(self, scene_id: str, npc_id: str, player_id: str, players: Sequence[str] = (),
                   limit: int = 50) -> SceneView:
        """The lines `npc_id` heard in the scene (while present), answering the players
        present (`player_id` and `players`), the newest `limit` of them, oldest first."""
        everyone = sorted({player_id, *players})
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(
                select(SceneLineRow.player_id, SceneLineRow.player_text, SceneLineRow.speaker,
                       SceneLineRow.speaker_name, SceneLineRow.npc_text)
                .where(SceneLineRow.scene_id == scene_id, SceneLineRow.npc_id == npc_id,
                       SceneLineRow.player_id.in_(everyone))
                .order_by(SceneLineRow.id.desc()).limit(limit)
            ).all()
            since = conn.execute(
                select(func.min(SceneLineRow.after_turn))
                .where(SceneLineRow.scene_id == scene_id, SceneLineRow.npc_id == npc_id,
                       SceneLineRow.player_id == player_id)
            ).scalar_one()
        return SceneView(tuple(HeardLine(*row) for row in reversed(rows)), since)

    @_database_errors('read the scene')
    def scene_status(self, scene_id: str, player_id: str, players: Sequence[str] = ()) -> SceneStatus:
        everyone = sorted({player_id, *players})
        with self._serial, self.engine.connect() as conn:
            last = conn.execute(
                select(func.max(SceneLineRow.scene_turn))
                .where(SceneLineRow.scene_id == scene_id, SceneLineRow.player_id == player_id)
            ).scalar_one()
            spoke = conn.execute(
                select(SceneLineRow.speaker, func.max(SceneLineRow.id))
                .where(SceneLineRow.scene_id == scene_id, SceneLineRow.player_id.in_(everyone),
                       SceneLineRow.npc_id == SceneLineRow.speaker)
                .group_by(SceneLineRow.speaker)
            ).all()
        return SceneStatus((last or 0) + 1, MappingProxyType({speaker: int(at) for speaker, at in spoke}))

    @_database_errors('read a stored request')
    def find_request_records(self, player_id: str, request_id: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(NPC id, request record, response) of every turn the player committed under
        `request_id`, with any NPC: a scene turn leaves one per speaking NPC."""
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(
                select(TurnRecordRow.npc_id, TurnRecordRow.request, TurnRecordRow.response)
                .where(TurnRecordRow.player_id == player_id, TurnRecordRow.request_id == request_id)
                .order_by(TurnRecordRow.id)
            ).all()
        return [(npc, dict(request or {}), response) for npc, request, response in rows]

    # -- writing -----------------------------------------------------------------------
    def commit_turn(
        self,
        player_id: str,
        npc_id: str,
        expected_version: int,
        state: NpcState,
        turn_number: int,
        exchange: Exchange,
        fired: Iterable[tuple[str, Mapping[str, Any]]],
        request: Mapping[str, Any],
        response: Mapping[str, Any],
        request_id: str | None = None,
        memories: Iterable[Memory] = (),
        heard: Iterable[tuple[str, Memory, int]] = (),
    ) -> None:
        """Write one turn in one transaction, or nothing at all: with it the memories it
        leaves (`memories`) and the word it sends to other NPCs (`heard`: (npc_id, memory,
        delay in the player's turns))."""
        self.write_turn(TurnWrite(player_id, npc_id, expected_version, state, turn_number, exchange, tuple(fired),
                                  request, response, request_id, tuple(memories), tuple(heard)))

    def write_turn(self, write: "TurnWrite") -> None:
        """`commit_turn` with its arguments in one value."""
        try:
            with self._serial, self.engine.begin() as conn:
                self._write_turn(conn, write)
        except IntegrityError as exc:
            raise self._conflict(exc, write.player_id, [write.npc_id], write.request_id) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"Could not save the turn in {self.safe_url}: {_reason(exc)}") from exc

    def commit_scene_turn(self, scene_id: str, player_id: str, scene_turn: int, writes: Sequence["TurnWrite"],
                          lines: Sequence["SceneLine"]) -> None:
        """Write a group scene's turn in one transaction, or nothing at all: every speaking
        NPC's turn (state with its version check, history, flags, turn record, memories,
        word) and the lines each NPC present heard (`lines`, a row per listener)."""
        spoke = {w.npc_id: w.turn_number - 1 for w in writes if w.player_id == player_id}
        try:
            with self._serial, self.engine.begin() as conn:
                for write in writes:  # the state writes first: they take the write lock
                    self._write_turn(conn, write)
                listeners = sorted({npc for line in lines for npc in line.listeners} - set(spoke))
                before = dict(conn.execute(
                    select(NpcStateRow.npc_id, NpcStateRow.turns)
                    .where(NpcStateRow.player_id == player_id, NpcStateRow.npc_id.in_(listeners))).all()
                ) if listeners else {}
                for line in lines:
                    for npc in line.listeners:
                        conn.execute(insert(SceneLineRow).values(
                            scene_id=scene_id, player_id=player_id, scene_turn=scene_turn, position=line.position,
                            npc_id=npc, speaker=line.speaker, speaker_name=line.speaker_name,
                            player_text=line.player_text, npc_text=line.text,
                            after_turn=spoke[npc] if npc in spoke else before.get(npc, 0)))
        except IntegrityError as exc:
            request_id = next((w.request_id for w in writes if w.request_id is not None), None)
            raise self._conflict(exc, player_id, [w.npc_id for w in writes], request_id) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"Could not save the scene turn in {self.safe_url}: {_reason(exc)}") from exc

    def _conflict(self, exc: IntegrityError, player_id: str, npc_ids: Sequence[str],
                  request_id: str | None) -> PersonaAgentsError:
        """What a unique-constraint failure on commit means: the request was answered
        meanwhile (DuplicateRequestError), or another turn came first (ConcurrentTurnError)."""
        if request_id is not None and any(self.find_response(player_id, npc, request_id) is not None
                                          for npc in npc_ids):
            return DuplicateRequestError(f"request_id {request_id!r} was committed meanwhile")
        return ConcurrentTurnError(f"another turn for ({player_id}, {', '.join(npc_ids)}) was committed first")

    def _write_turn(self, conn, w: "TurnWrite") -> None:
        state, player_id, npc_id, turn_number = w.state, w.player_id, w.npc_id, w.turn_number
        values = dict(trust=state.trust, relationship=state.relationship, mood=state.mood,
                      quest_stage=state.quest_stage, axes=dict(state.axes), turns=turn_number,
                      version=w.expected_version + 1)
        # The state write comes first so that it takes the database's write lock
        # before anything is read inside this transaction.
        if w.expected_version == 0:
            conn.execute(insert(NpcStateRow).values(player_id=player_id, npc_id=npc_id, **values))
        else:
            changed = conn.execute(
                update(NpcStateRow)
                .where(NpcStateRow.player_id == player_id, NpcStateRow.npc_id == npc_id,
                       NpcStateRow.version == w.expected_version)
                .values(**values)
            ).rowcount
            if changed != 1:
                raise ConcurrentTurnError(f"state of ({player_id}, {npc_id}) changed during the turn")
        conn.execute(insert(HistoryRow).values(player_id=player_id, npc_id=npc_id, turn_number=turn_number,
                                               player_text=w.exchange.player, npc_text=w.exchange.npc))
        for flag, payload in w.fired:
            conn.execute(insert(FlagEventRow).values(player_id=player_id, npc_id=npc_id, flag=flag,
                                                     turn_number=turn_number, payload=dict(payload)))
        response = w.response
        conn.execute(insert(TurnRecordRow).values(
            player_id=player_id, npc_id=npc_id, turn_number=turn_number, request_id=w.request_id,
            request=dict(w.request), response=dict(response),
            delta_trust=response["deltas"]["trust"], delta_relationship=response["deltas"]["relationship"],
            flags=response["flags"], flags_rejected=response["flags_rejected"],
            timings_ms=dict(response.get("meta", {}).get("timings_ms", {})),
        ))
        heard = list(w.heard)
        # The player's turns so far, this one included: the clock word travels by.
        played = self._played(conn, player_id) if heard else 0
        for to_npc, memory, delay in [(npc_id, m, 0) for m in w.memories] + heard:
            conn.execute(insert(MemoryRow).values(
                player_id=player_id, npc_id=to_npc, turn_number=memory.turn, kind=memory.kind,
                text=memory.text, source=memory.source, visible_from=played + delay if delay else 0))

    @_database_errors('save the state')
    def put_state(self, player_id: str, npc_id: str, state: NpcState) -> None:
        """Start a fresh conversation from a given state (test plans, game-driven setups)."""
        self.reset(player_id, npc_id)
        with self._serial, self.engine.begin() as conn:
            conn.execute(insert(NpcStateRow).values(
                player_id=player_id, npc_id=npc_id, trust=state.trust, relationship=state.relationship,
                mood=state.mood, quest_stage=state.quest_stage, axes=dict(state.axes), turns=0, version=1,
            ))

    @_database_errors('reset the conversation')
    def reset(self, player_id: str, npc_id: str | None = None) -> int:
        """Forget a player's conversations (with one NPC, or all); returns states removed."""
        with self._serial, self.engine.begin() as conn:
            removed = 0
            for table in (NpcStateRow, HistoryRow, FlagEventRow, TurnRecordRow, MemoryRow, SceneLineRow):
                cond = [table.player_id == player_id] + ([table.npc_id == npc_id] if npc_id else [])
                result = conn.execute(delete(table).where(*cond))
                if table is NpcStateRow:
                    removed = result.rowcount
        return removed

    # -- inspection --------------------------------------------------------------------
    @_database_errors('export the state')
    def export(self, player_id: str, npc_id: str | None = None) -> dict[str, Any]:
        """Everything stored for a player (and NPC), JSON-ready."""
        def where(table):
            return [table.player_id == player_id] + ([table.npc_id == npc_id] if npc_id else [])

        def rows(table, *cond, order):
            return conn.execute(select(table.__table__).where(*cond).order_by(order)).mappings().all()

        with self._serial, self.engine.connect() as conn:
            out: dict[str, Any] = {"player_id": player_id, "npcs": {}}
            for s in rows(NpcStateRow, *where(NpcStateRow), order=NpcStateRow.npc_id):
                mine = (player_id, s["npc_id"])
                history = rows(HistoryRow, HistoryRow.player_id == mine[0], HistoryRow.npc_id == mine[1],
                               order=HistoryRow.turn_number)
                flags = rows(FlagEventRow, FlagEventRow.player_id == mine[0], FlagEventRow.npc_id == mine[1],
                             order=FlagEventRow.turn_number)
                records = rows(TurnRecordRow, TurnRecordRow.player_id == mine[0], TurnRecordRow.npc_id == mine[1],
                               order=TurnRecordRow.turn_number)
                out["npcs"][s["npc_id"]] = {
                    "state": {**{k: s[k] for k in ("trust", "relationship", "mood", "quest_stage", "turns")},
                              **({"axes": s["axes"]} if s["axes"] else {})},
                    "flags_fired": [{"flag": f["flag"], "turn": f["turn_number"], "payload": f["payload"]}
                                    for f in flags],
                    "history": [{"turn": h["turn_number"], "player": h["player_text"], "npc": h["npc_text"]}
                                for h in history],
                    "memories": [m.to_dict() for m in self._memories(conn, mine[0], mine[1], None, False)],
                    "turn_records": [
                        {"turn": r["turn_number"], "request_id": r["request_id"], "request": r["request"],
                         "response": r["response"],
                         "created_at": r["created_at"].isoformat() if r["created_at"] else None}
                        for r in records
                    ],
                }
            # NPCs that never talked with the player but heard of them from others.
            heard_only = conn.execute(select(MemoryRow.npc_id).where(*where(MemoryRow)).distinct()).scalars()
            for other in sorted(set(heard_only) - set(out["npcs"])):
                out.setdefault("heard_only", {})[other] = [
                    m.to_dict() for m in self._memories(conn, player_id, other, None, False)]
            # What NPCs heard in group scenes of the player's (a row per listener).
            lines = rows(SceneLineRow, *where(SceneLineRow), order=SceneLineRow.id)
            if lines:
                out["scene_lines"] = [
                    {"scene": r["scene_id"], "scene_turn": r["scene_turn"], "position": r["position"],
                     "listener": r["npc_id"], "speaker": r["speaker"], "player": r["player_text"],
                     "npc": r["npc_text"]} for r in lines]
        return out

    @_database_errors('count rows')
    def count(self, table: str, player_id: str | None = None, npc_id: str | None = None) -> int:
        tables: dict[str, Any] = {"turn_records": TurnRecordRow, "history": HistoryRow, "flag_events": FlagEventRow,
                                  "states": NpcStateRow, "memories": MemoryRow, "scene_lines": SceneLineRow}
        model = tables[table]
        cond = ([model.player_id == player_id] if player_id else []) + ([model.npc_id == npc_id] if npc_id else [])
        with self._serial, self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(model).where(*cond)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()
