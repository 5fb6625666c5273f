"""Bounded request cost: every request-supplied part of the prompt has a token budget.

A request may only fill the prompt so far: the player's line, each item, action and
game_state pair, the location and quest stage, and each of those lists as a whole have a
budget (`Persona.request_budget`), counted in tokens of the model that reads the prompt
(digits cost a token each, so a 12,000-digit number is 12,000 tokens), as the prompt
shows it (neutralised: NFKC folding can turn one character into eighteen; lists with
their separators). A part over its
budget is refused with an `InputError` naming the field (422 on the API) before any model
work; the stored history, which the request does not choose but earlier requests filled,
is truncated instead: the newest exchanges that fit are kept, the oldest dropped. With
the persona text fixed, the prompt, the cache it needs and the turn's time are bounded
whatever a client sends.

The pipeline applies this right after the preprocess stage (the utterance is then
normalised), so every caller (HTTP, CLI, test plans) gets the same bound.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from .errors import InputError
from .markers import neutralize
from .persona import RequestBudget
from .turn import Turn

TokenCounter = Callable[[str], int]


def utf8_bytes(text: str) -> int:
    """An upper bound on the tokens of any byte-level BPE tokenizer (each token covers at
    least one byte): the fallback when the generate step exposes no tokenizer."""
    return len(text.encode("utf-8"))


def _shown(field: str, value: Any) -> str:
    """The value as prompt_format renders it (str()); an integer past Python's digit limit
    cannot even be rendered, and is refused like any other oversized value."""
    try:
        return str(value)
    except ValueError:
        raise InputError(field, "is a number too long to show to the model; send a shorter value.") from None


def rendered(text: str) -> str:
    """The text as the prompt shows it: neutralised (NFKC folding can make one character
    eighteen, `<` becomes a wider look-alike) and on one line, as prompt_format renders
    request text. Budgets count this, not what was sent."""
    return " ".join(neutralize(text).split())


def _check(count: TokenCounter, field: str, text: str, limit: int, what: str) -> int:
    text = rendered(text)
    # Counting is cheap, but a 60 KB value need not be tokenized to know it fits: bytes
    # bound tokens from above.
    if utf8_bytes(text) <= limit:
        return count(text) if text else 0
    used = count(text)
    if used > limit:
        raise InputError(field, f"is {used} tokens long; {what} may use at most {limit} tokens of the "
                                f"model's prompt (request_budget in the persona). Send a shorter value.")
    return used


def _check_values(count: TokenCounter, field: str, values: Iterable[tuple[str, str]],
                  value_limit: int, section_limit: int) -> None:
    shown = []
    for name, text in values:
        _check(count, name, text, value_limit, "one value")
        shown.append(rendered(text))
    # The list as the prompt shows it, separators included.
    total = count(", ".join(shown)) if shown else 0
    if total > section_limit:
        raise InputError(field, f"uses {total} tokens together; the list may use at most {section_limit} "
                                "tokens of the model's prompt (request_budget in the persona). Send fewer or "
                                "shorter entries.")


def check_request(turn: Turn, budget: RequestBudget, count: TokenCounter) -> None:
    """Refuse a request whose line or game context is over its budget (InputError names the field)."""
    ctx = turn.context
    _check(count, "utterance", turn.utterance, budget.utterance, "the player's line")
    if ctx.location:
        _check(count, "location", ctx.location, budget.value, "the location")
    if ctx.quest_stage:
        _check(count, "quest_stage", ctx.quest_stage, budget.value, "the quest stage")
    _check_values(count, "items", ((f"items[{i}]", _shown(f"items[{i}]", v)) for i, v in enumerate(ctx.items)),
                  budget.value, budget.items)
    _check_values(count, "actions", ((f"actions[{i}]", _shown(f"actions[{i}]", v)) for i, v in enumerate(ctx.actions)),
                  budget.value, budget.actions)
    _check_values(count, "game_state", _game_state_pairs(ctx.game_state), budget.value, budget.game_state)


def _game_state_pairs(game_state: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for key in sorted(game_state):
        field = f"game_state.{key}"
        yield field, f"{key}={_shown(field, game_state[key])}"


def truncate_history(turn: Turn, budget: RequestBudget, count: TokenCounter) -> Turn:
    """The turn with only the newest exchanges that fit the history budget."""
    used, kept = 0, 0
    for exchange in reversed(turn.history):
        used += count(rendered(exchange.player)) + count(rendered(exchange.npc))
        if used > budget.history:
            break
        kept += 1
    if kept == len(turn.history):
        return turn
    dropped = len(turn.history) - kept
    return turn.replace(history=turn.history[len(turn.history) - kept:]).with_meta(history_truncated=dropped)


def apply_request_budget(turn: Turn, budget: RequestBudget, count: TokenCounter | None) -> Turn:
    """Check the request against `budget` and bound the history; see the module docstring."""
    count = count or utf8_bytes
    check_request(turn, budget, count)
    return truncate_history(turn, budget, count)
