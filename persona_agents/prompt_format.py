"""Rendering a turn into prompts: the seed's sectioned format and chat messages.

Shared by the prompt steps and (later) by training, so the model is trained on exactly
the text it sees at inference. Everything that comes from the request (the player's
line, earlier lines, items, actions, location, game state) passes through
`markers.neutralize`; persona text is the studio's own and is trusted.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .markers import neutralize
from .persona import FlagRule
from .turn import Turn, effective_stage

#: Bumped whenever the sectioned layout changes; saved with trained adapters. New
#: adapters are trained on the latest; each adapter is read with the version it records.
SECTIONED_FORMAT_VERSION = 2
SECTIONED_FORMAT_VERSIONS = (1, 2, 3)


def decides_first(version: int) -> bool:
    """Whether a sectioned version has the game's decision written before the reply
    (versions 2 and 3: `<EVENTS>`, `<EXAMPLES>`, `<DECISION>`)."""
    return version >= 2


def _safe(text: Any) -> str:
    return neutralize(str(text))


def _safe_line(text: Any) -> str:
    """Request text on one line: a newline in a player's text must not start a line of its
    own in the sectioned prompt, where each line is a field (`items: ...`). Text without
    line breaks or runs of spaces, all of the training data's, renders as before."""
    return " ".join(_safe(text).split())


def _game_state_line(game_state: Mapping[str, Any]) -> str:
    return ", ".join(f"{_safe_line(k)}={_safe_line(v)}" for k, v in sorted(game_state.items()))


def _context_lines(ctx) -> list[str]:
    """The request's items, actions and game state, a line each (request text: neutralised)."""
    lines = [
        "items: " + (", ".join(_safe_line(i) for i in ctx.items) or "none"),
        "actions: " + (", ".join(_safe_line(a) for a in ctx.actions) or "none"),
    ]
    if ctx.game_state:
        lines.append("game_state: " + _game_state_line(ctx.game_state))
    return lines


def _history_lines(turn: Turn, history_turns: int) -> list[str]:
    """The last `history_turns` exchanges, `<PLAYER>` and `<NPC>` a line each."""
    lines = []
    for exchange in turn.history[-history_turns:] if history_turns else ():
        lines.append(f"<PLAYER> {_safe_line(exchange.player)}")
        lines.append(f"<NPC> {_safe_line(exchange.npc)}")
    return lines


def effective_location(turn: Turn) -> str | None:
    return turn.context.location or turn.persona.location


def render_sectioned(turn: Turn, history_turns: int = 6, version: int = 1,
                     event_descriptions: Mapping[str, str] | None = None) -> str:
    """The sectioned prompt. Version 1 (the seed's) ends with `<STATE>` and the open
    `<NPC>` turn; versions 2 and 3 end after `<STATE>`: the game's decision comes next
    (`render_decision`), then the reply. Version 3 is version 2 with the conversation
    moved before the turn's own parts (issue 29)."""
    if version in (2, 3):
        return render_sectioned_v2(turn, history_turns, event_descriptions, history_first=version == 3)
    if version != 1:
        raise ValueError(f"unknown sectioned prompt version {version}; known: {SECTIONED_FORMAT_VERSIONS}")
    p, s, ctx = turn.persona, turn.state, turn.context
    location = effective_location(turn)
    sys_lines = [
        f"npc_id: {p.id}",
        f"name: {p.name}",
        f"role: {p.role}",
        f"location: {_safe_line(location) if location else 'unknown'}",
        f"tags: mood={s.mood}, trust={s.trust:.2f}, relationship={s.relationship:+.2f}, "
        f"quest_stage={_safe_line(effective_stage(turn))}{_axes_tags(s)}",
    ]
    if p.traits:
        sys_lines.append("traits: " + ", ".join(p.traits))
    if p.speaking_style:
        sys_lines.append("style: " + p.speaking_style.strip())
    rag_lines = [f"LORE: {chunk.text.strip()}" for chunk in turn.lore]
    if p.backstory:
        rag_lines.append("DESCRIPTION: " + " ".join(p.backstory.split()))
    state_lines = _context_lines(ctx)
    ctx_lines = _history_lines(turn, history_turns)
    return (
        "<SYS>\n" + "\n".join(sys_lines) + "\n</SYS>\n"
        "<RAG>\n" + "\n".join(rag_lines) + "\n</RAG>\n"
        "<PLAYER_STATE>\n" + "\n".join(state_lines) + "\n</PLAYER_STATE>\n"
        "<CTX>\n" + "\n".join(ctx_lines) + "\n</CTX>\n"
        f"<PLAYER> {_safe_line(turn.utterance)}\n<STATE>\n<NPC>"
    )


def _rule_conditions(rule: FlagRule) -> list[str]:
    """A flag rule's conditions in words, for the model to read (the rules enforce them)."""
    words = []
    if rule.stages is not None:
        words.append("quest stage " + " or ".join(rule.stages))
    if rule.min_trust is not None:
        words.append(f"trust at least {rule.min_trust:.2f}")
    if rule.min_relationship is not None:
        words.append(f"relationship at least {rule.min_relationship:+.2f}")
    if rule.requires_items:
        words.append("the player holds " + " and ".join(rule.requires_items))
    if rule.requires_actions:
        words.append("the player has done " + " and ".join(rule.requires_actions))
    if rule.any_of:
        words.append("either " + " or ".join("(" + ", ".join(_rule_conditions(alt)) + ")" for alt in rule.any_of))
    if rule.once:
        words.append("once only")
    return words


def event_lines(persona, descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The events this NPC's rules allow, each with what it means and when it may fire:
    `give_item: hands over the map fragment; only if relationship at least +0.50`."""
    lines = []
    for name, rule in persona.flag_rules.items():
        if not rule.allowed:
            continue
        meaning = " ".join((rule.means or (descriptions or {}).get(name) or name.replace("_", " ")).split())
        conditions = _rule_conditions(rule)
        lines.append(f"{name}: {meaning}" + ("; only if " + ", ".join(conditions) if conditions else ""))
    return lines


def render_sectioned_v2(turn: Turn, history_turns: int = 6, event_descriptions: Mapping[str, str] | None = None,
                        history_first: bool = False) -> str:
    """Version 2: what the studio wrote first and the same on every turn of an NPC (a
    prefix cache can keep it): `<SYS>` the persona, `<EVENTS>` what its rules allow and
    when, `<EXAMPLES>` its example lines; then the turn: `<RAG>` lore, `<PLAYER_STATE>`
    (state tags, location, items, actions, game state), `<CTX>` history, the player's
    line and `<STATE>`, where the heads read. The decision and `<NPC>` follow.

    Version 3 (`history_first`): the same sections, with `<CTX>` right after
    `<EXAMPLES>`: what never changes for the NPC, then what only grows (the
    conversation: last turn's plus one exchange), then what changes every turn. A cache
    of one turn's prompt then serves the next turn's up to its newest exchange."""
    p, s, ctx = turn.persona, turn.state, turn.context
    sys_lines = [f"npc_id: {p.id}", f"name: {p.name}", f"role: {p.role}"]
    if p.traits:
        sys_lines.append("traits: " + ", ".join(p.traits))
    if p.speaking_style:
        sys_lines.append("style: " + " ".join(p.speaking_style.split()))
    if p.backstory:
        sys_lines.append("DESCRIPTION: " + " ".join(p.backstory.split()))
    example_lines = []
    for line in p.example_lines:
        example_lines.append(f"<PLAYER> {' '.join(line.player.split())}")
        example_lines.append(f"<NPC> {' '.join(line.npc.split())}")
    location = effective_location(turn)
    state_lines = [
        f"location: {_safe_line(location) if location else 'unknown'}",
        f"tags: mood={s.mood}, trust={s.trust:.2f}, relationship={s.relationship:+.2f}, "
        f"quest_stage={_safe_line(effective_stage(turn))}{_axes_tags(s)}",
        *_context_lines(ctx),
    ]
    history = "<CTX>\n" + "\n".join(_history_lines(turn, history_turns)) + "\n</CTX>\n"
    return (
        "<SYS>\n" + "\n".join(sys_lines) + "\n</SYS>\n"
        "<EVENTS>\n" + "\n".join(event_lines(p, event_descriptions) or ["none"]) + "\n</EVENTS>\n"
        "<EXAMPLES>\n" + "\n".join(example_lines) + "\n</EXAMPLES>\n"
        + (history if history_first else "")
        + "<RAG>\n" + "\n".join(f"LORE: {chunk.text.strip()}" for chunk in turn.lore) + "\n</RAG>\n"
        "<PLAYER_STATE>\n" + "\n".join(state_lines) + "\n</PLAYER_STATE>\n"
        + ("" if history_first else history)
        + f"<PLAYER> {_safe_line(turn.utterance)}\n<STATE>\n"
    )


def _payload_text(payload: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(payload.items()))


def render_decision(fired: Sequence[tuple[str, Mapping[str, Any]]] = (),
                    refused: Sequence[tuple[str, str]] = (), lines: Sequence[str] = ()) -> str:
    """Version 2's decision, written after `<STATE>` once the game's rules have decided,
    and the open `<NPC>` turn: `<DECISION> give_item(item=repaired_sword), quest_complete
    | refused: unlock_hidden_path (trust_below)`, or `<DECISION> none`; then, in grounded
    mode, the writers' lines that fit it (`<LINES>`, one per line). The reply is trained
    to agree with the decision and to stay close to the lines."""
    parts = [f"{name}({_payload_text(payload)})" if payload else name for name, payload in fired]
    text = ", ".join(parts) or "none"
    if refused:
        text += " | refused: " + ", ".join(f"{name} ({reason})" for name, reason in refused)
    shown = "".join(f"- {' '.join(line.split())}\n" for line in lines)
    return f"<DECISION> {text}\n" + (f"<LINES>\n{shown}</LINES>\n" if shown else "") + "<NPC>"


def decision_of_turn(turn: Turn, lines: Sequence[str] = ()) -> str:
    """`render_decision` of a decided turn (its fired flags with payloads, its refusals)."""
    return render_decision([(f.name, f.payload) for f in turn.flags],
                           [(r.name, r.reason) for r in turn.flags_rejected], lines)


def _axes_tags(state) -> str:
    """The game's extra axes after the built-in tags (nothing in a game without them, so
    the prompts adapters were trained on stay the same)."""
    return "".join(f", {name}={value:+.2f}" for name, value in state.axes.items())


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
