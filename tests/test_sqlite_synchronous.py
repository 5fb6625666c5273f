"""SQLite durability (issue 28): NORMAL by default, FULL on request by the URL
(`sqlite:///state.db?synchronous=full`), a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from persona_agents.store import StateStore
from persona_agents.store.store import SQLITE_SYNCHRONOUS, StoreError

# PRAGMA synchronous reads back as a number: 1 NORMAL, 2 FULL.
LEVELS = {"normal": 1, "full": 2}


def _synchronous(store: StateStore) -> int:
    with store.engine.connect() as connection:
        return connection.execute(text("PRAGMA synchronous")).scalar_one()


def test_normal_by_default(tmp_path: Path):
    assert _synchronous(StateStore(f"sqlite:///{tmp_path / 'state.db'}")) == LEVELS["normal"]


@pytest.mark.parametrize("level", SQLITE_SYNCHRONOUS)
def test_the_url_chooses_the_level(tmp_path: Path, level: str):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}?synchronous={level.upper()}")
    assert _synchronous(store) == LEVELS[level]
    assert (tmp_path / "state.db").is_file()  # the parameter is not part of the file name
    assert not list(tmp_path.glob("*synchronous*"))


def test_an_unknown_level_names_the_choices(tmp_path: Path):
    with pytest.raises(StoreError) as caught:
        StateStore(f"sqlite:///{tmp_path / 'state.db'}?synchronous=off")
    message = str(caught.value)
    assert "synchronous='off'" in message and "normal, full" in message
    assert not (tmp_path / "state.db").exists()  # refused before anything is written
