"""What an NPC has heard, as the history its prompt shows (pure functions).

In a scene an NPC's history is, oldest first:

1. its own conversation with the player up to the scene (the stored exchanges up to its
   turn count when it first heard this player in the scene);
2. the scene's lines it heard while present, one exchange per line: the player's line
   it answered, then the line, its own as it said it, another NPC's prefixed with that
   NPC's name ("Pip: Rope's two copper."); a line answering another player present is
   prefixed with that player's id;
3. this scene turn's lines said before it speaks, the same way.

The prompt format stays as it is (`<CTX>` exchange lines; chat turns), so adapters and
prompt steps work unchanged. An NPC absent from a scene turn stored no line of it, so
nothing said then reaches its prompt.
"""

from __future__ import annotations

from typing import Sequence

from ..store.store import HeardLine, SceneView
from ..turn import Exchange

#: Exchanges a scene history keeps (the prompt step shows its own `history_turns` of them).
HISTORY_LIMIT = 50


def heard_exchange(line: HeardLine, listener: str, player_id: str) -> Exchange:
    player = line.player_text if line.player_id == player_id else f"{line.player_id}: {line.player_text}"
    npc = line.text if line.speaker == listener else f"{line.speaker_name}: {line.text or '...'}"
    return Exchange(player=player, npc=npc)


def own_history_before(history: Sequence[Exchange], turns: int, since_turn: int | None) -> tuple[Exchange, ...]:
    """The stored exchanges (`history`, the newest of `turns` turns) up to turn `since_turn`
    (None: all of them)."""
    if since_turn is None:
        return tuple(history)
    first = turns - len(history) + 1  # the turn number of history[0]
    return tuple(history[: max(0, since_turn - first + 1)])


def scene_history(listener: str, player_id: str, own: Sequence[Exchange], own_turns: int, view: SceneView,
                  said_now: Sequence[HeardLine] = ()) -> tuple[Exchange, ...]:
    """The history `listener` hears in a scene turn (see the module docstring)."""
    out = list(own_history_before(own, own_turns, view.since_turn))
    out += [heard_exchange(line, listener, player_id) for line in (*view.lines, *said_now)]
    return tuple(out[-HISTORY_LIMIT:])
