"""`persona-agents test --show-prompt`: what the model saw and said on each plan turn.

A writer whose plan fails wants to see the prompt the turn rendered (persona, state, lore,
history, the player's line) next to the reply and the flag probabilities, without
patching code. The prompt is not part of a `TurnResponse` (a game never needs it), so a
small plugin registered only for this run keeps the last completed turn's prompt.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..turn import Prompt, TurnResponse
from .runner import NO_HEADS


class PromptRecorder:
    """A plugin that keeps the prompt of the last completed turn."""

    def __init__(self) -> None:
        self.last: Prompt | None = None

    @hookimpl
    def turn_completed(self, turn, response):  # noqa: ARG002 - the hook's signature
        self.last = turn.prompt


def prompt_text(prompt: Prompt | None) -> str:
    """The prompt as the model read it: the rendered text, or the chat messages in order."""
    if prompt is None:
        return "(no prompt: the pipeline has no prompt step)"
    if prompt.text is not None:
        return prompt.text
    return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in prompt.messages)


def render_turn_trace(plan: str, path: str, seed: int, number: int, say: str, prompt: Prompt | None,
                      response: TurnResponse) -> str:
    """One turn's block: the prompt, the reply, the flags, the deltas and the new state."""
    fired = ", ".join(f.name for f in response.flags) or "none"
    rejected = ", ".join(f"{f.name} ({f.reason})" for f in response.flags_rejected) or "none"
    if response.flag_probs is None:
        probs = NO_HEADS
    else:
        probs = ", ".join(f"{name}={p:.2f}" for name, p in sorted(response.flag_probs.items(), key=lambda kv: -kv[1]))
    fmt = prompt.format if prompt is not None else "none"
    state = response.state
    return "\n".join([
        f"===== {plan} ({path}), seed {seed}, turn {number}",
        f"player: {say}",
        f"----- prompt ({fmt})",
        prompt_text(prompt),
        "----- reply",
        response.text,
        "-----",
        f"flags fired: {fired}; rejected by the rules: {rejected}",
        f"flag probabilities: {probs}",
        f"deltas: trust {response.deltas.trust:+.3f}, relationship {response.deltas.relationship:+.3f}; "
        f"state after: trust {state.trust:.3f}, relationship {state.relationship:.3f}, "
        f"quest_stage {state.quest_stage}" + "".join(f", {a} {v:+.3f}" for a, v in state.axes.items()),
        "",
    ])
