"""`multihead` (generate): the reply plus deltas and flags from a trained adapter, in one run.

It loads the base model with the adapter merged, the state heads and their calibrated
thresholds (`persona-agents train` writes them; see `persona_agents/multihead/`), once
per process, shared by every NPC naming the same adapter. It needs the `sectioned`
prompt: the heads read the hidden state at its `<STATE>` marker.

The step is an engine plus the heads, by composition (issue 28): the engine
(`persona_agents/engines/`: fast, transformers or sglang, option `engine`) runs one
prompt pass and hands back the final norm's hidden state at `<STATE>`; the heads
(`persona_agents/multihead/reader.py`, a small MLP on the CPU) read that one vector, so
there is no second pass over prompt and reply.

The generation carries the deltas, every flag's probability, and the flags whose
probability reaches their threshold; the pipeline's postprocess steps (game rules) then
decide what the game applies.

Decide, then speak. Right after the prompt pass the heads read `<STATE>` and the
pipeline's rules decide (`current_decider`). An adapter trained on sectioned version 2
or 3 then has the decision written into its prompt (`<DECISION> give_item(item=map_fragment)
... <NPC>`): every engine runs those few tokens on the prompt pass's cache and decodes
from there (`after_prefill` of the engine contract). No decoding at all where a
writer's line fits the decision.

`engine: sglang` (with `url`): a remote SGLang server runs the model; this process keeps
only the adapter's tokenizer and heads. The prompt pass up to `<STATE>` returns that
position's hidden state (the final norm's, as here), the heads and the game's rules run
here, and the reply is a second request that starts with the prompt pass's tokens, which
SGLang finds in its radix cache (`meta.sglang`). See persona_agents/engines/sglang_client.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from persona_agents.engines.contract import EngineRequest, EngineResult
from persona_agents.errors import StepError
from persona_agents.fastpath.compute import on_compute_thread
from persona_agents.hookspecs import hookimpl
from persona_agents.models import LoadedModel
from persona_agents.multihead.reader import HeadsReader
from persona_agents.prompt_format import decides_first, decision_of_turn
from persona_agents.streaming import Decider, Decision, current_decider
from persona_agents.turn import FiredFlag, Generation

from .transformers_generator import EngineOptions, TransformersGenerator

DEFAULT_ADAPTER = "training/adapters/smollm2-npc"


def adapter_stamp(path: Path) -> tuple:
    """The adapter folder's files with their sizes and times: a retrained or refitted
    adapter is a new key in the process-wide model registry, never the stale one."""
    if not path.is_dir():
        return ()
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))


class MultiHeadGenerator(TransformersGenerator):
    name = "multihead"
    stage = "generate"
    description = "Reply, deltas and flags from a fine-tuned adapter with state heads, in one generate call."

    class Options(EngineOptions):
        engine: Literal["auto", "fast", "transformers", "sglang"] = Field(  # type: ignore[assignment]
            "auto", description="`fast`: the lean decoder with batching (llama-family float32 models); "
            "`transformers`: transformers generate; `auto`: fast where the model allows, else transformers; "
            "`sglang`: a remote SGLang server (`url`) runs the model, the heads run here.")
        adapter: str = Field(DEFAULT_ADAPTER, description="Adapter folder written by `persona-agents train`; a "
                             "relative path is resolved against the project root (the NPC folder's parent).")
        model: str | None = Field(None, description="Base model; default: the base the adapter was trained on "
                                  "(a relative path resolves against the project root, as `adapter` does).")
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="Weights dtype.")
        url: str | None = Field(None, description="Engine sglang: the SGLang server's address, e.g. "
                                "http://localhost:30000 (started with --enable-return-hidden-states).")
        timeout_s: float = Field(60.0, gt=0, description="Engine sglang: seconds to wait for each request.")
        lora: str = Field("merged", description="Engine sglang: `merged` (the server serves the adapter merged into "
                          "its base: `python -m persona_agents.engines.sglang_client export`), or the name of a "
                          "LoRA adapter loaded in SGLang (--lora-paths NAME=PATH), sent as `lora_path`.")
        state_pass: Literal["split", "single"] = Field(
            "split", description="Engine sglang: `split` sends the prompt before <STATE> first, so the hidden "
            "states come back as one row; `single`: one request, one row per prompt token SGLang computes.")
        read_events: Literal["auto", "heads", "matcher"] = Field(
            "auto", description="Who decides which events the player's line asks for: `auto`: the adapter's event "
            "matcher (reads each event's meaning and the writers' example lines; multihead/matcher.py) decides the "
            "events with five or more example player lines on an NPC the heads were not fitted on, and with the "
            "heads together on an NPC they were fitted on; the matcher decides the events the adapter has no head "
            "for; the heads the rest. `heads`: the heads only; `matcher`: the matcher for every event. An adapter "
            "without a matcher uses its heads.")

        @model_validator(mode="after")
        def _sglang_needs_url(self):
            if self.engine == "sglang" and not self.url:
                raise ValueError("engine 'sglang' needs `url`: the SGLang server's address, e.g. "
                                 "url: http://localhost:30000")
            return self

    path_options = {"adapter": "folder", "model": "model"}
    decides = True
    options: Options

    def __init__(self, options, persona, runtime):
        super().__init__(options, persona, runtime)
        self.heads: HeadsReader | None = None  # the state heads: engine + heads, by composition
        self._remote = None  # engine sglang: the SGLangEngine of this adapter's heads

    def adapter_path(self) -> Path:
        """The adapter folder: an absolute path as given, a relative one under the game folder
        (the NPC folder's parent), whatever the working directory."""
        return self.runtime.path(self.options.adapter)

    def base_model_ref(self) -> str | None:
        return None if self.options.model is None else self.runtime.model_ref(self.options.model)

    def _load(self) -> LoadedModel:
        from persona_agents.multihead.artifacts import load_adapter

        prompt_steps = [spec.name for spec in self.persona.pipeline.prompt]
        if "chat_template" in prompt_steps:
            raise StepError(
                f"NPC '{self.persona.id}': the multihead generate step needs the sectioned prompt (its heads read "
                "the <STATE> marker), but pipeline.prompt is chat_template. Set `prompt: [sectioned]`.")
        path = self.adapter_path()
        if self.options.engine == "sglang":
            return self._load_remote(path)
        if self.options.load_in_4bit:
            raise StepError(f"NPC '{self.persona.id}': load_in_4bit is not supported by the multihead step: its "
                            "adapter is merged into the base, which needs full-precision weights. Use dtype: "
                            "bfloat16 on a GPU (half the float32 memory).")
        device = self._device()
        # The fast engine needs no transformers model: a start without it is seconds faster.
        lean = self.options.engine != "transformers" and device == "cpu"
        base = self.base_model_ref()
        key = ("multihead", str(path.resolve()), adapter_stamp(path), base, self.options.dtype, lean, device)

        def build():
            bundle = load_adapter(path, base, self.options.dtype, lean=lean)
            if device != "cpu":  # the heads stay on the CPU: they read one vector a turn
                bundle.model.to(device)
            # `meta.model` names the base, as for the plain step; `meta.adapter` the adapter.
            return bundle, LoadedModel(name=bundle.meta["base"]["name"], model=bundle.model, tokenizer=bundle.tokenizer)

        self.bundle, loaded = self.runtime.models.shared(key, build)
        self._load_heads(path)
        return loaded

    def _load_remote(self, path: Path) -> LoadedModel:
        """Engine sglang: the adapter's tokenizer and heads only; the server has the weights."""
        from persona_agents.engines.sglang_client import SGLangClient, SGLangEngine, load_remote_bundle

        self.bundle = self.runtime.models.shared(("multihead-remote", str(path.resolve()), adapter_stamp(path)),
                                                 lambda: load_remote_bundle(path))
        self._load_heads(path)
        opts = self.options
        client = SGLangClient(str(opts.url), opts.timeout_s, None if opts.lora == "merged" else opts.lora)
        self._remote = SGLangEngine(client, self.bundle.heads.config.hidden_size, path, opts.state_pass)
        return LoadedModel(name=self.bundle.meta["base"]["name"], model=None, tokenizer=self.bundle.tokenizer)

    def _build_engine(self):
        if self._remote is not None:
            from persona_agents.engines.sglang_client import SGLangRemoteEngine

            return SGLangRemoteEngine(self._remote, self.bundle.tokenizer), None
        return super()._build_engine()

    def _load_heads(self, path: Path) -> None:
        """The heads, for the events this NPC's game declares of those the adapter predicts
        (issue 27). A generalist adapter is trained on more events than one game uses: the
        others are never proposed. An adapter that knows none of the game's events is an error."""
        from persona_agents.game import GAME_FILE, load_game

        game = load_game(self.runtime.npcs_dir)
        declared = [name for name in self.bundle.flags if name in game.events]
        if not declared:
            raise StepError(
                f"NPC '{self.persona.id}': adapter {path} predicts {', '.join(self.bundle.flags)}, none of which the "
                f"game in {self.runtime.npcs_dir} declares ({GAME_FILE}); declared events: {', '.join(game.events)}. "
                "Declare them in the game file or use an adapter trained on this game's events.")
        evidence_bank = None
        if self.bundle.heads.config.evidence_size:
            from persona_agents.multihead.evidence import EventEvidence

            embedder = self.runtime.embedders.get(self.bundle.meta.get("evidence", {}).get("embedder", "embedded"))
            evidence_bank = EventEvidence(self.persona, self.bundle.flags, embedder)
        matcher, event_deltas = self._load_matcher(path, game)
        self.heads = HeadsReader(self.bundle, declared, evidence_bank, matcher, event_deltas)
        tok = self.bundle.tokenizer
        self._state_id = tok.convert_tokens_to_ids(self.bundle.meta.get("state_token", "<STATE>"))
        self._rag_id = tok.convert_tokens_to_ids("<RAG>")

    def _load_matcher(self, path: Path, game):
        """The adapter's event matcher for this NPC's events it decides (`read_events`), or
        None (no matcher in the adapter, or nothing for it to decide); and each event's
        typical deltas fitted with it (multihead/event_deltas.py; empty without a matcher)."""
        from persona_agents.multihead.matcher import NpcMatcher, event_readers, heads_npcs, load_matcher

        found = self.runtime.models.shared(("matcher", str(path.resolve()), adapter_stamp(path)),
                                           lambda: load_matcher(path))
        if found is None:
            return None, {}
        model, meta = found
        event_deltas = meta.get("event_deltas", {})
        readers = event_readers(self.persona, list(game.events), self.bundle.flags,
                                heads_npcs(self.bundle.meta, meta), self.options.read_events)
        if not readers:
            return None, event_deltas
        embedder = self.runtime.embedders.get(meta.get("embedder", "embedded"))
        # The game's description where a rule has no `means`, as the prompt step (and the
        # matcher's training turns) write it.
        descriptions = {name: spec.description for name, spec in game.events.items()}
        return NpcMatcher(model, meta["threshold"], self.persona, list(readers), embedder, descriptions,
                          blended=[name for name, who in readers.items() if who == "both"],
                          event_thresholds=meta.get("event_thresholds")), event_deltas

    def run(self, turn):
        if turn.prompt.format != "sectioned":
            raise StepError(
                f"NPC '{self.persona.id}': the multihead generate step needs the sectioned prompt format, got "
                f"'{turn.prompt.format}'. Set `prompt: [sectioned]` in the persona's pipeline.")
        if turn.prompt.version != self.bundle.prompt_version:
            raise StepError(
                f"NPC '{self.persona.id}': adapter {self.options.adapter} was trained on sectioned prompt version "
                f"{self.bundle.prompt_version}, but the prompt step rendered version {turn.prompt.version}. Set "
                f"`version: {self.bundle.prompt_version}` (or `auto`) in the sectioned step's options.")
        return super().run(turn)

    def _begin(self, turn) -> _HeadsTurn:
        # On the turn's thread: the decider lives in the pipeline's context, which the compute
        # thread does not see, and the evidence embeds the player's line.
        assert self.heads is not None
        from persona_agents.multihead.matcher import npc_last_line

        evidence, matched = self.heads.turn_inputs(turn.utterance, npc_last_line(turn))
        return _HeadsTurn(current_decider(), evidence, matched=matched)

    def engine_request(self, turn, prompt_ids, seed, reading: _HeadsTurn) -> EngineRequest:
        request = super().engine_request(turn, prompt_ids, seed, reading)
        request.state_index = self._state_index(prompt_ids)
        request.prefix_len = self._prefix_len(prompt_ids, turn)
        # Decide, then speak: the heads read the <STATE> row as soon as the prompt pass has
        # run; the pipeline's decider applies the game's rules, sends the decision out and
        # says whether the model's words are still needed; a version 2 prompt then gets the
        # decision's tokens before the reply.
        writes_decision = decides_first(turn.prompt.version)
        if reading.decider is not None or writes_decision:
            def after(state):
                decision = self._decide(turn, self._read(reading, state), reading.decider, reading.matched)
                if not decision.speak:
                    return False
                return self._decision_ids(decision) if writes_decision else True

            request.after_prefill = after
        return request

    def _read(self, reading: _HeadsTurn, state):
        """The heads on the kept <STATE> row, once a turn (another trip to the compute
        thread would wait for whatever runs there)."""
        if reading.heads is None:
            assert self.heads is not None
            reading.heads = on_compute_thread(self.heads.read, state, reading.evidence)
        return reading.heads

    def _state_index(self, prompt_ids: list[int]) -> int:
        found = [i for i, t in enumerate(prompt_ids) if t == self._state_id]
        if not found:
            raise StepError("The prompt has no <STATE> marker token; the sectioned prompt step renders one.")
        return found[-1]

    def _prefix_len(self, prompt_ids: list[int], turn) -> int:
        # Version 2 opens with what is the same on every turn of this NPC (persona,
        # events, example lines), up to <RAG>; version 3 adds the conversation, which the
        # next turn repeats plus one exchange. The fast engine keeps their cache.
        if not decides_first(turn.prompt.version) or self._rag_id not in prompt_ids:
            return 0
        return prompt_ids.index(self._rag_id)

    def _low_rank(self) -> dict:
        return self.bundle.low_rank

    def _decide(self, turn, heads, decider: Decider | None, matched=None) -> Decision:
        """The pipeline's decision, or outside a pipeline the persona's rules on the heads'
        proposals."""
        assert self.heads is not None
        empty = Generation(text="", model=self.loaded.name, new_tokens=0, finished=True)
        provisional = turn.replace(generation=self.heads.apply(empty, heads, matched, self._allowed(turn)))
        if decider is not None:
            return decider(provisional)
        from persona_agents.rules import enforce

        generation = provisional.generation
        proposed = provisional.replace(flags=tuple(FiredFlag(name) for name in generation.flags),
                                       deltas=generation.deltas)
        return Decision(True, enforce(proposed, self.persona))

    def _allowed(self, turn) -> set[str] | None:
        """The events the persona's rules allow in this turn's state (None: no rules, all)."""
        from persona_agents.rules import allowed_flags

        return set(allowed_flags(turn)) if self.persona.flag_rules else None

    def _decision_ids(self, decision: Decision) -> list[int]:
        """The decision of version 2 (and the lines to ground the reply in), as tokens that
        continue the prompt."""
        text = decision_of_turn(decision.turn, decision.lines)
        return self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _finish(self, turn, result: EngineResult, reading: _HeadsTurn):
        assert self.heads is not None
        if result.state is None:
            raise StepError(f"NPC '{self.persona.id}': engine '{self.engine.name}' returned no <STATE> row.")
        heads = self._read(reading, result.state)
        meta = {}
        if reading.matched:
            blended = self.heads.matcher.blended
            alone = sorted(name for name in reading.matched if name not in blended)
            both = sorted(name for name in reading.matched if name in blended)
            meta = {**({"events_read_by_matcher": alone} if alone else {}),
                    **({"events_read_by_heads_and_matcher": both} if both else {})}
        generation = self.heads.apply(turn.generation, heads, reading.matched, self._allowed(turn))
        return turn.replace(generation=generation).with_meta(
            adapter=self.options.adapter, thresholds_version=self.bundle.meta.get("thresholds_version"), **meta)


@dataclass
class _HeadsTurn:
    """What a turn keeps from its request to `_finish`."""

    decider: Decider | None
    evidence: object
    heads: object = None  # the heads' output, once read
    matched: dict | None = None  # the event matcher's probabilities for the events it decides


@hookimpl
def register_steps(register):
    register(MultiHeadGenerator)
