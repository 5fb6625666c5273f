"""Streaming a reply while it is generated.

A caller that wants text pieces as they are produced (the HTTP server's SSE endpoint)
runs the turn inside `stream_to(callback)`; a generate step that supports streaming
asks `current_sink()` and feeds it. Pieces never contain prompt markers: text is held
back from the first `<` until it is clear it does not start a marker, and the reply is
cut at the end of the NPC's turn, as the final text is. Where a postprocess step may
change the text (`Step.rewrites_text`: a writer's line, a catchphrase, a word filter),
the pipeline streams nothing during generation and sends the reply once, after
postprocessing (`meta.streamed`), so what the player sees is always what the steps let
through.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .markers import strip_markers

if TYPE_CHECKING:
    from .turn import Turn

TextSink = Callable[[str], None]


@contextlib.contextmanager
def _bound(var: contextvars.ContextVar, value) -> Iterator[None]:
    """`var` set to `value` for the block (the turn's thread and what it calls)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


_sink: contextvars.ContextVar[TextSink | None] = contextvars.ContextVar("persona_agents_text_sink", default=None)


def stream_to(sink: TextSink | None) -> contextlib.AbstractContextManager[None]:
    return _bound(_sink, sink)


def current_sink() -> TextSink | None:
    return _sink.get()


#: Receives the turn's decision (flags with payloads, refused flags, deltas) once, as soon
#: as it is known: before any text where the generate step decides before it speaks.
DecisionSink = Callable[[dict], None]
_decision_sink: contextvars.ContextVar[DecisionSink | None] = contextvars.ContextVar(
    "persona_agents_decision_sink", default=None)
@dataclass(frozen=True)
class Decision:
    """What the pipeline's decider answers a generate step after the prompt pass."""

    speak: bool  # False: a writer's line will be said, the model's words are not needed
    turn: "Turn"  # the decided turn: its fired and refused events, capped deltas
    lines: tuple[str, ...] = ()  # lines the model should read before its reply (grounded mode)


#: Set by the pipeline while its generate stage runs: a generate step that knows the
#: turn's events after the prompt pass calls it with the provisional turn.
Decider = Callable[["Turn"], Decision]
_decider: contextvars.ContextVar[Decider | None] = contextvars.ContextVar("persona_agents_decider", default=None)


def decisions_to(sink: DecisionSink | None) -> contextlib.AbstractContextManager[None]:
    return _bound(_decision_sink, sink)


def current_decision_sink() -> DecisionSink | None:
    return _decision_sink.get()


def deciding(decider: Decider | None) -> contextlib.AbstractContextManager[None]:
    return _bound(_decider, decider)


def current_decider() -> Decider | None:
    return _decider.get()


class MarkerSafeStreamer:
    """A transformers streamer (put/end) that forwards only marker-free text."""

    def __init__(self, tokenizer, sink: TextSink, stop_markers: Sequence[str], skip_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.sink = sink
        self.stop_markers = tuple(stop_markers)
        self._skip = skip_prompt_tokens
        self._ids: list[int] = []
        self._sent = 0
        self._stopped = False

    def put(self, value) -> None:
        ids = value.reshape(-1).tolist()
        if self._skip:  # the first call carries the prompt
            dropped = min(self._skip, len(ids))
            ids, self._skip = ids[dropped:], self._skip - dropped
        self._ids.extend(ids)
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if self._stopped:
            return
        text = self.tokenizer.decode(self._ids, skip_special_tokens=False)
        cut = len(text)
        for marker in self.stop_markers:
            pos = text.find(marker)
            if 0 <= pos < cut:
                cut, self._stopped = pos, True
        unsent = text[self._sent:cut]
        if self._stopped or final:
            # Nothing more will come: release the rest, minus anything marker-like.
            piece = strip_markers(unsent, self.stop_markers)
        else:
            hold = unsent.find("<")  # could be the start of a marker: wait and see
            piece = unsent if hold == -1 else unsent[:hold]
            piece = piece.rstrip("\ufffd")  # half of a multi-byte character
        consumed = len(unsent) if (self._stopped or final) else len(piece)
        if self._sent == 0:
            piece = piece.lstrip()
        self._sent += consumed
        if piece:
            self.sink(piece)
