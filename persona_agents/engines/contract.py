"""One contract for every engine that runs an NPC's model (issue 28).

An engine turns prompt token ids into reply token ids, and hands back the final hidden
state (after the model's last norm) at one prompt position from the same prompt pass:
the `<STATE>` row the state heads read. The heads are a separate small component
(`persona_agents.multihead.reader.HeadsReader`); a generate step is an engine plus,
optionally, heads (`default_plugins/transformers_generator.py`).

Decide, then speak: `after_prefill` is called once, right after the prompt pass, with
the kept row. It answers False (the turn ends there, nothing is decoded), True (decode
the reply), or a list of token ids that continue the prompt before the reply (the
game's decision, sectioned version 2). Every engine runs those ids on the prompt pass's
cache: no engine computes the prompt twice.

Engines:
- `fast` (`engines/fast.py`): the lean CPU decoder with continuous batching.
- `transformers` (`engines/transformers_engine.py`): transformers on any device it
  supports; concurrent turns are batched into one `generate` call.
- `sglang` (`engines/sglang_client.py`, `SGLangRemoteEngine`): a remote SGLang server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, Union

if TYPE_CHECKING:
    import torch

#: What `after_prefill` answers: stop (False), speak (True), or continue with these ids.
Verdict = Union[bool, list[int]]


@dataclass(frozen=True)
class Sampling:
    """How the reply is drawn; temperature 0 is greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass
class EngineRequest:
    """One turn's model run."""

    prompt_ids: list[int]
    sampling: Sampling
    seed: int
    #: End-of-turn token ids: the reply ends with one of them (kept, as transformers does).
    eos_ids: Sequence[int]
    #: Prompt markers: the reply ends once one appears in its text.
    stop_markers: tuple[str, ...] = ()
    #: The prompt position whose final hidden state comes back (`<STATE>`); None: none.
    state_index: int | None = None
    #: How many first prompt ids are the same on every turn of this NPC (a cache may keep them).
    prefix_len: int = 0
    #: Decide, then speak (see the module docstring).
    after_prefill: Callable[[torch.Tensor | None], Verdict] | None = None
    #: Streaming: called with each piece of new reply ids as they are chosen.
    on_ids: Callable[[list[int]], None] | None = None


@dataclass
class EngineResult:
    """What the engine did: the reply's ids (empty when the turn ended after the prompt
    pass), the kept row (1-D, float32, on the CPU) and what to report in the turn's meta."""

    new_ids: list[int]
    state: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """Runs prompts of one loaded model; `run` is safe to call from any thread."""

    #: `meta.engine`: fast, transformers or sglang.
    name: str

    def run(self, request: EngineRequest) -> EngineResult: ...


def ends_at_marker(tokenizer, new_ids: Sequence[int], markers: Sequence[str]) -> bool:
    """Whether a prompt marker appears in the reply's last tokens (as transformers' stop
    strings check): every engine ends a reply there."""
    return bool(markers) and any(m in tokenizer.decode(list(new_ids[-16:])) for m in markers)


def verdict_ids(verdict: Verdict) -> list[int] | None:
    """The ids to continue the prompt with (empty: none), or None where the turn ends."""
    if verdict is False:
        return None
    return list(verdict) if isinstance(verdict, list) else []
