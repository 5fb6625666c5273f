"""The tables. Changing them means adding a migration in migrations.py."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "pa_schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)


class NpcStateRow(Base):
    """Current state of one NPC towards one player. `version` guards against lost
    updates between processes (optimistic concurrency)."""

    __tablename__ = "pa_npc_state"
    player_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    npc_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    trust: Mapped[float] = mapped_column(Float, nullable=False)
    relationship: Mapped[float] = mapped_column(Float, nullable=False)
    mood: Mapped[str] = mapped_column(String(100), nullable=False)
    quest_stage: Mapped[str] = mapped_column(String(100), nullable=False)
    #: The game's extra state axes by name (schema version 4); null or {} without them.
    axes: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    turns: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HistoryRow(Base):
    __tablename__ = "pa_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    player_id: Mapped[str] = mapped_column(String(200), index=True)
    npc_id: Mapped[str] = mapped_column(String(200), index=True)
    turn_number: Mapped[int] = mapped_column(Integer, nullable=False)
    player_text: Mapped[str] = mapped_column(Text, nullable=False)
    npc_text: Mapped[str] = mapped_column(Text, nullable=False)
    __table_args__ = (UniqueConstraint("player_id", "npc_id", "turn_number", name="uq_history_turn"),)


class FlagEventRow(Base):
    __tablename__ = "pa_flag_event"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    player_id: Mapped[str] = mapped_column(String(200), index=True)
    npc_id: Mapped[str] = mapped_column(String(200), index=True)
    flag: Mapped[str] = mapped_column(String(100), nullable=False)
    turn_number: Mapped[int] = mapped_column(Integer, nullable=False)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)


class TurnRecordRow(Base):
    """Every committed turn: what was asked, what was answered, and what it changed."""

    __tablename__ = "pa_turn_record"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    player_id: Mapped[str] = mapped_column(String(200), index=True)
    npc_id: Mapped[str] = mapped_column(String(200), index=True)
    turn_number: Mapped[int] = mapped_column(Integer, nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request: Mapped[dict] = mapped_column(JSON, nullable=False)
    response: Mapped[dict] = mapped_column(JSON, nullable=False)
    delta_trust: Mapped[float] = mapped_column(Float, nullable=False)
    delta_relationship: Mapped[float] = mapped_column(Float, nullable=False)
    flags: Mapped[list] = mapped_column(JSON, default=list)
    flags_rejected: Mapped[list] = mapped_column(JSON, default=list)
    timings_ms: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (
        UniqueConstraint("player_id", "npc_id", "request_id", name="uq_turn_request"),
        UniqueConstraint("player_id", "npc_id", "turn_number", name="uq_turn_number"),
    )


class MemoryRow(Base):
    """One thing an NPC remembers about a player beyond the history window (issue 30): a
    fact the player stated, an event of a turn, or word heard from another NPC (`source`).
    Written in the transaction of the turn it comes from; the game may read and delete it."""

    __tablename__ = "pa_memory"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    player_id: Mapped[str] = mapped_column(String(200), index=True)
    npc_id: Mapped[str] = mapped_column(String(200), index=True)
    turn_number: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: Hidden until the player has played this many turns (with any NPC): word on its way.
    visible_from: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SceneLineRow(Base):
    """One NPC's line in a group scene, as one NPC present heard it (issue 30): a row per
    (line, listener), the speaker itself included. An NPC absent from the scene turn has
    no row, so it never hears the line. `after_turn` is the listener's own turn count
    with the scene turn's player before that scene turn: its conversation up to there
    comes before the scene in its history. Written in the scene turn's transaction."""

    __tablename__ = "pa_scene_line"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scene_id: Mapped[str] = mapped_column(String(200), index=True)
    #: The player whose line this answers (the scene turn's player).
    player_id: Mapped[str] = mapped_column(String(200), index=True)
    #: The scene turn, counted per (scene, player), and the line's place in it.
    scene_turn: Mapped[int] = mapped_column(Integer, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    #: The listener.
    npc_id: Mapped[str] = mapped_column(String(200), index=True)
    speaker: Mapped[str] = mapped_column(String(200), nullable=False)
    speaker_name: Mapped[str] = mapped_column(String(200), nullable=False)
    player_text: Mapped[str] = mapped_column(Text, nullable=False)
    npc_text: Mapped[str] = mapped_column(Text, nullable=False)
    after_turn: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("scene_id", "player_id", "scene_turn", "position", "npc_id",
                                       name="uq_scene_line"),)
