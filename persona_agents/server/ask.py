"""`POST /ask`: the seed's game-server request, mapped onto one of our turns.

A game server written against the seed's engine sends `session_id`, `npc_id`,
`user_input`, a `context` with `player_state`, `game_state` and `npc_state`, and
optionally `require`, `npc_config` and `dialogue_history`. The mapping:

- `session_id` is the player: state, history and fired flags are kept per
  (session_id, npc_id) in the state store, exactly as for `player_id` in /v1.
- `user_input` is the utterance (same limits and normalisation as /v1).
- `context.player_state.items` / `.actions` become the turn's items and actions (each
  entry a name, or an object whose `id` or `name` is used); `.location` (or a string
  `.position`) the location. Other scalar keys of player_state go into the prompt's
  game state as `player_<key>`.
- `context.game_state.quest_stage` is the game's quest stage (it wins over the stored
  one; `context.npc_state.quest_stage` is used when game_state has none);
  `game_state.location` is the location when player_state has none; every other key of
  game_state is passed on as free game state.
- `context.npc_state.trust`, `.relationship`, `.mood`: ignored. The store, not the request,
  holds the NPC's state (the game keeps authority through quest stage, items, actions and
  the persona's flag rules); the state after the turn is returned in `meta.state`.
- `dialogue_history`: ignored; the stored history of (session_id, npc_id) is used, so a
  game server need not resend it. `npc_config`: ignored; personas live in YAML files
  and a request cannot change them.
- `require` (optional) decides `valid`: `words` (any of them in user_input,
  case-insensitive), `items` and `actions` (all present in player_state), `game_state`
  (each key equal to the sent value) and `min_deltas` (`trust`, `relationship`: the
  turn's deltas reach at least these). The turn runs and is stored either way; the
  unmet conditions are listed in `meta.require_unmet`, and the game decides.

The response: `npc_output_text` is the reply; `deltas` the turn's deltas; `flags` maps
every event of the game (`_game.yaml`'s events, or the default eight) to 1 if it fired
this turn, else 0; `valid` is true when the reply is not empty and `require` holds;
`meta` is the turn's meta plus `state`, `flag_payloads`, `flags_rejected`, `flag_probs`,
`require_unmet` and `ignored_fields` (the request fields that had no effect).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..flags import DEFAULT_FLAGS
from ..turn import GameContext, TurnResponse
from .schemas import AskRequest

_SCALARS = (str, int, float, bool)


def _name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        value = entry.get("id", entry.get("name"))
        return str(value) if value is not None else None
    return None


def _names(entries: list[Any]) -> tuple[str, ...]:
    return tuple(n for n in (_name(e) for e in entries) if n)


def ask_to_turn(req: AskRequest) -> tuple[GameContext, list[str]]:
    """The turn's game context, and the request fields that have no effect."""
    ctx = req.context
    player, game, npc = ctx.player_state, ctx.game_state, ctx.npc_state
    position = player.position if isinstance(player.position, str) else None
    location = player.location or position or game.location
    game_state: dict[str, Any] = dict(game.model_extra or {})
    for key, value in (player.model_extra or {}).items():
        if isinstance(value, _SCALARS):
            game_state[f"player_{key}"] = value
    ignored = [f"context.npc_state.{k}" for k in ("trust", "relationship", "mood") if getattr(npc, k) is not None]
    ignored += [f"context.npc_state.{k}" for k in (npc.model_extra or {})]
    if req.dialogue_history:
        ignored.append("dialogue_history")
    if req.npc_config:
        ignored.append("npc_config")
    context = GameContext(
        quest_stage=game.quest_stage or npc.quest_stage or None,
        location=location or None,
        items=_names(player.items),
        actions=_names(player.actions),
        game_state=game_state,
    )
    return context, ignored


def ask_field(field: str) -> str:
    """A turn field named as the /ask request spells it (for 422 problems)."""
    head, dot, rest = field.partition(".")
    if field == "utterance":
        return "user_input"
    if field.startswith(("items", "actions", "location")):
        return "context.player_state." + field
    if field == "quest_stage":
        return "context.game_state.quest_stage"
    if head == "game_state" and dot:
        if rest.startswith("player_"):  # player_state's scalar keys travel as player_<key>
            return "context.player_state." + rest.removeprefix("player_")
        return "context.game_state." + rest
    return field


def unmet_requirements(req: AskRequest, context: GameContext, response: TurnResponse) -> list[str]:
    """The `require` conditions that do not hold, one readable line each."""
    need = req.require
    if need is None:
        return []
    unmet: list[str] = []
    said = req.user_input.lower()
    if need.words and not any(w.lower() in said for w in need.words):
        unmet.append("words: none of " + ", ".join(need.words) + " in user_input")
    missing = [i for i in need.items if i not in context.items]
    if missing:
        unmet.append("items: missing " + ", ".join(missing))
    missing = [a for a in need.actions if a not in context.actions]
    if missing:
        unmet.append("actions: missing " + ", ".join(missing))
    sent = req.context.game_state.model_dump()
    for key, value in need.game_state.items():
        if sent.get(key) != value:
            unmet.append(f"game_state.{key}: is {sent.get(key)!r}, required {value!r}")
    if need.min_deltas is not None:
        for axis in ("trust", "relationship"):
            floor, got = getattr(need.min_deltas, axis), getattr(response.deltas, axis)
            if floor is not None and got < floor:
                unmet.append(f"min_deltas.{axis}: {got:+.2f} < {floor:+.2f}")
    return unmet


def ask_response(req: AskRequest, context: GameContext, response: TurnResponse, ignored: list[str],
                 events: Sequence[str] = DEFAULT_FLAGS) -> dict[str, Any]:
    body = response.to_dict()
    fired = {f["name"] for f in body["flags"]}
    flags = {name: int(name in fired) for name in events}
    flags.update({name: 1 for name in fired if name not in flags})
    unmet = unmet_requirements(req, context, response)
    meta = dict(body["meta"])
    meta.update(
        state=body["state"],
        flag_payloads={f["name"]: f["payload"] for f in body["flags"]},
        flags_rejected=body["flags_rejected"],
        flag_probs=body["flag_probs"],
        require_unmet=unmet,
        ignored_fields=ignored,
    )
    return {
        "session_id": req.session_id,
        "npc_output_text": body["text"],
        "deltas": body["deltas"],
        "flags": flags,
        "valid": bool(body["text"].strip()) and not unmet,
        "meta": meta,
    }
