"""The flag vocabulary: game events an NPC turn can fire (docs/game-rules.md)."""

from __future__ import annotations

#: The default vocabulary, in the fixed order used by datasets and the flag head.
DEFAULT_FLAGS: tuple[str, ...] = (
    "give_item",
    "give_hint",
    "npc_main_story",
    "quest_start",
    "quest_complete",
    "unlock_hidden_path",
    "open_trade",
    "end_conversation",
)

#: Quest stages used by the sample world; personas may add their own.
DEFAULT_QUEST_STAGES: tuple[str, ...] = ("not_started", "in_progress", "complete")
