"""What a version 2 training sequence shows after the decision, and refusals to learn from.

Sectioned prompt version 2 writes the game's decision after `<STATE>`, and in the
`grounded` reply mode the writers' lines that fit it (`<LINES>`) before `<NPC>`. So that
the adapter learns both situations, `attach_grounding` gives about half of the training
examples (a fixed half: a hash of the record's place) the lines the `authored_lines` step
would show for them, ranked the same way (`rank_lines`: the gold decision, the state, the
player line's meaning); the others are trained without lines, as the `authored` and
`free` modes prompt.

`refusal_examples` turns the writers' refusal lines (`lines:` entries with `refuses:`)
into training examples: each example player line, said where the persona's rules refuse
the event (the persona's initial state), answered with the line, and the decision
`none | refused: EVENT (reason)`. They teach the reply to refuse in the NPC's own voice
when the game says no (issue 25); they carry no event and no delta, and serve the reply
only (the heads are refitted on the real examples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Sequence

from ..persona import Persona
from ..rules import check_flag, turn_facts
from ..turn import FiredFlag, NpcState, RejectedFlag, Turn
from .data import Example

log = logging.getLogger("persona_agents.multihead")

#: Share of the examples trained with the fitting lines shown.
GROUNDED_SHARE = 0.5
#: Lines shown, as the step's `grounding_lines` default.
LINES_SHOWN = 2
#: Example player lines used per refusal line: refusals are a voice to learn, not the
#: bulk of the data (the sample and generalist NPCs' lines give about 600 otherwise).
REFUSAL_EXAMPLES_PER_LINE = 2


def _in_share(source: str, share: float) -> bool:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def decided_turn(example: Example) -> Turn:
    """The example's turn as the game decides it: the persona's rules on the gold events."""
    from ..rules import enforce

    proposed = example.turn.replace(flags=tuple(FiredFlag(name) for name in example.flags), flags_rejected=())
    decided = enforce(proposed, example.turn.persona)
    extra = tuple(example.refused)
    return decided.replace(flags_rejected=decided.flags_rejected + extra) if extra else decided


def attach_grounding(examples: Sequence[Example], embedder, share: float = GROUNDED_SHARE,
                     shown: int = LINES_SHOWN) -> list[Example]:
    """`examples`, a fixed `share` of them with the writers' lines that fit them."""
    from ..default_plugins.authored_lines import rank_lines

    chosen = [i for i, e in enumerate(examples) if e.turn.persona.lines and _in_share(e.source, share)]
    if not chosen:
        return list(examples)
    vectors: dict[str, list] = {}
    for i in chosen:
        persona = examples[i].turn.persona
        if persona.id not in vectors:
            groups = [line.examples or [line.text] for line in persona.lines]
            flat = embedder.encode([t for group in groups for t in group], batch_size=64)
            starts = [0]
            for group in groups:
                starts.append(starts[-1] + len(group))
            vectors[persona.id] = [flat[a:b] for a, b in zip(starts, starts[1:])]
    queries = embedder.encode([examples[i].turn.utterance for i in chosen], batch_size=64)
    out = list(examples)
    grounded = 0
    for i, query in zip(chosen, queries):
        example = examples[i]
        ranked = rank_lines(example.turn.persona.lines, vectors[example.turn.persona.id], decided_turn(example),
                            query, min_score=0.45, min_event_score=0.0)
        lines = tuple(line.text.strip() for line, _ in ranked[:shown])
        if lines:
            out[i] = dataclasses.replace(example, grounding=lines)
            grounded += 1
    log.info("Grounding: %d of %d training examples show the writers' lines that fit them.", grounded, len(out))
    return out


def refusal_examples(personas: Sequence[Persona]) -> list[Example]:
    """Training examples from the writers' refusal lines (see the module docstring)."""
    from ..default_plugins.authored_lines import fits_state

    out = []
    for persona in personas:
        start = persona.initial_state
        state = NpcState(start.trust, start.relationship, start.mood, start.quest_stage)
        for line in persona.lines:
            for event in line.refuses:
                turn = Turn(npc_id=persona.id, player_id="refusals", utterance="", persona=persona, state=state)
                refusal = check_flag(persona.flag_rules.get(event), turn_facts(turn, ()))
                if refusal is None or not fits_state(line, turn):
                    continue  # the rules would let it fire here, or the line does not fit
                for n, said in enumerate(line.examples[:REFUSAL_EXAMPLES_PER_LINE]):
                    out.append(Example(
                        turn=turn.replace(utterance=said), response=line.text.strip(), delta=(0.0, 0.0), flags=(),
                        source=f"{persona.id}:lines:{line.id}:{n}",
                        refused=(RejectedFlag(event, refusal.reason, refusal.detail),)))
    return out
