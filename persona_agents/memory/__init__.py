"""Long-term memory (issue 30): what an NPC keeps about a player beyond the history window.

- `condense`: a finished turn -> the memories it leaves (by rules: the player's own
  statements about themselves, the events that fired);
- `recall`: the `recall_memories` retrieve step, which puts the memories closest in meaning
  to the player's line into the prompt's lore lines, within a token budget.

The state store writes a turn's memories in the turn's own transaction, and the game reads
and deletes them (`GET`/`DELETE /v1/players/{player}/npcs/{npc}/memories`, `state show`,
`state export`).
"""

from .condense import condense_turn

__all__ = ["condense_turn"]
