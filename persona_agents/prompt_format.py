"""Rendering a turn into prompts: the seed's sectioned format and chat messages.

Shared by the prompt steps and (later) by training, so the model is trained on exactly
the text it sees at inference. Everything that comes from the request (the player's
line, earlier lines, items, actions, location, game state) passes through
`markers.neutralize`; persona text is the studio's own and is trusted.
"""

from __future__ import annotations

from typing import Any, Mapping

from .markers import neutralize
from .turn import Turn, effective_stage

#: Bumped whenever the sectioned layout changes; saved with trained adapters.
SECTIONED_FORMAT_VERSION = 1


def _safe(text: Any) -> str:
    return neutralize(str(text))


def _safe_line(text: Any) -> str:
    """Request text on one line: a newline in a player's text must not start a line of its
    own in the sectioned prompt, where each line is a field (`items: ...`). Text without
    line breaks or runs of spaces, all of the training data's, renders as before."""
    return " ".join(_safe(text).split())


def _game_state_line(game_state: Mapping[str, Any]) -> str:
    return ", ".join(f"{_safe_line(k)}={_safe_line(v)}" for k, v in sorted(game_state.items()))


def effective_location(turn: Turn) -> str | None:
    return turn.context.location or turn.persona.location


def render_sectioned(turn: Turn, history_turns: int = 6) -> str:
    """The seed's sectioned prompt, ending with `<STATE>` and the open `<NPC>` turn."""
    p, s, ctx = turn.persona, turn.state, turn.context
    location = effective_location(turn)
    sys_lines = [
        f"npc_id: {p.id}",
        f"name: {p.name}",
        f"role: {p.role}",
        f"location: {_safe_line(location) if location else 'unknown'}",
        f"tags: mood={s.mood}, trust={s.trust:.2f}, relationship={s.relationship:+.2f}, "
        f"quest_stage={_safe_line(effective_stage(turn))}",
    ]
    if p.traits:
        sys_lines.append("traits: " + ", ".join(p.traits))
    if p.speaking_style:
        sys_lines.append("style: " + p.speaking_style.strip())
    rag_lines = [f"LORE: {chunk.text.strip()}" for chunk in turn.lore]
    if p.backstory:
        rag_lines.append("DESCRIPTION: " + " ".join(p.backstory.split()))
    state_lines = [
        "items: " + (", ".join(_safe_line(i) for i in ctx.items) or "none"),
        "actions: " + (", ".join(_safe_line(a) for a in ctx.actions) or "none"),
    ]
    if ctx.game_state:
        state_lines.append("game_state: " + _game_state_line(ctx.game_state))
    ctx_lines = []
    for exchange in turn.history[-history_turns:] if history_turns else ():
        ctx_lines.append(f"<PLAYER> {_safe_line(exchange.player)}")
        ctx_lines.append(f"<NPC> {_safe_line(exchange.npc)}")
    return (
        "<SYS>\n" + "\n".join(sys_lines) + "\n</SYS>\n"
        "<RAG>\n" + "\n".join(rag_lines) + "\n</RAG>\n"
        "<PLAYER_STATE>\n" + "\n".join(state_lines) + "\n</PLAYER_STATE>\n"
        "<CTX>\n" + "\n".join(ctx_lines) + "\n</CTX>\n"
        f"<PLAYER> {_safe_line(turn.utterance)}\n<STATE>\n<NPC>"
    )


def _describe_state(turn: Turn) -> str:
    s = turn.state
    trust = "You do not trust the player yet." if s.trust < 0.35 else (
        "You trust the player somewhat." if s.trust < 0.7 else "You trust the player.")
    feeling = "You dislike the player." if s.relationship < -0.3 else (
        "You feel neutral towards the player." if s.relationship < 0.3 else "You like the player.")
    return f"Your mood: {s.mood}. {trust} {feeling}"


def render_system_message(turn: Turn) -> str:
    """The persona as a system message, for instruct models that were not fine-tuned."""
    p, ctx = turn.persona, turn.context
    parts = [f"You are {p.name}, {p.role.strip()}"]
    if p.backstory:
        parts.append(" ".join(p.backstory.split()))
    if p.traits:
        parts.append("You are " + ", ".join(p.traits) + ".")
    if p.speaking_style:
        parts.append(p.speaking_style.strip())
    location = effective_location(turn)
    if location:
        parts.append(f"You are at {_safe(location).replace('_', ' ')}.")
    parts.append(_describe_state(turn))
    if turn.lore:
        parts.append("What you know: " + " ".join(chunk.text.strip() for chunk in turn.lore))
    if ctx.items:
        parts.append("The player carries: " + ", ".join(_safe(i).replace("_", " ") for i in ctx.items) + ".")
    parts.append(
        f"Stay in character as {p.name}. Reply in one to three short sentences of plain speech, "
        f"in language '{p.language}'. Never speak for the player."
    )
    return "\n".join(parts)


def render_messages(turn: Turn, history_turns: int = 6, examples: bool = True) -> tuple[dict[str, str], ...]:
    """System message, the persona's example lines, recent history, then the player's line."""
    messages = [{"role": "system", "content": render_system_message(turn)}]
    if examples:
        for line in turn.persona.example_lines:
            messages.append({"role": "user", "content": line.player})
            messages.append({"role": "assistant", "content": line.npc})
    for exchange in turn.history[-history_turns:] if history_turns else ():
        messages.append({"role": "user", "content": _safe(exchange.player)})
        messages.append({"role": "assistant", "content": _safe(exchange.npc)})
    messages.append({"role": "user", "content": _safe(turn.utterance)})
    return tuple(messages)
