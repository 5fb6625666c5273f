"""Group scenes (issue 30): several NPCs and one or more players at one place.

- `speakers`: who answers a player's line (addressed by name, by topic, or whose turn it is);
- `hearing`: what an NPC heard, as the history its prompt shows (absent NPCs hear nothing);
- `runner`: one scene turn, each speaker on its own pipeline, committed in one transaction.

`AgentManager.scene_turn` runs a scene turn; the CLI (`run-dialogue --scene`) and the HTTP
API (`POST /v1/scenes/{scene_id}/turns`, `.../turns/stream`) call it.
"""

from .speakers import SpeakerChoice, choose_speakers

__all__ = ["SpeakerChoice", "choose_speakers"]
