"""`multihead` (generate): the reply plus deltas and flags from a trained adapter, in one run.

It loads the base model with the adapter merged, the state heads and their calibrated
thresholds (`persona-agents train` writes them; see `persona_agents/multihead/`), once
per process, shared by every NPC naming the same adapter. It needs the `sectioned`
prompt: the heads read the hidden state at its `<STATE>` marker.

One generate call does everything. On the fast engine (the default) the prefill keeps
the `<STATE>` row of the final norm itself. On the transformers engine a forward hook on the decoder
stack (whose output is the final norm's) keeps the `<STATE>` position's hidden state during the prefill, the
first forward of `generate`, which covers the whole prompt. The heads (a small MLP) then
run on that one vector, so there is no second pass over prompt and reply.

The generation carries the deltas, every flag's probability, and the flags whose
probability reaches their threshold; the pipeline's postprocess steps (game rules) then
decide what the game applies.

Decide, then speak. Right after the prompt pass the heads read `<STATE>` and the
pipeline's rules decide (`current_decider`). An adapter trained on sectioned version 2
then has the decision written into its prompt (`<DECISION> give_item(item=map_fragment)
... <NPC>`): the fast engine runs those few tokens on the same cache and decodes from
there; the transformers engine continues from the prompt pass's cache the same way. No
decoding at all where a writer's line fits the decision.

`engine: sglang` (with `url`): a remote SGLang server runs the model; this process keeps
only the adapter's tokenizer and heads. The prompt pass up to `<STATE>` returns that
position's hidden state (the final norm's, as here), the heads and the game's rules run
here, and the reply is a second request that starts with the prompt pass's tokens, which
SGLang finds in its radix cache (`meta.sglang`). See persona_agents/engines/sglang_client.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from persona_agents.errors import StepError
from persona_agents.fastpath.compute import on_compute_thread
from persona_agents.hookspecs import hookimpl
from persona_agents.models import LoadedModel
from persona_agents.prompt_format import decision_of_turn
from persona_agents.streaming import Decider, Decision, MarkerSafeStreamer, current_decider, current_sink
from persona_agents.turn import Deltas, FiredFlag, Generation

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
        self._declared: list[str] = []
        self._evidence_bank = None  # EventEvidence, for heads that read few-shot evidence
        self._evidence: dict[int, object] = {}  # id(turn.prompt) -> evidence row, while a turn runs
        self._decided: dict[int, object] = {}  # id(turn.prompt) -> heads output read after the prompt pass
        self._deciders: dict[int, Decider | None] = {}  # id(turn.prompt) -> the pipeline's decider, while a turn runs
        self._remote = None  # the SGLangEngine of engine: sglang
        self._remote_meta: dict[int, dict] = {}  # id(turn.prompt) -> what SGLang reported, while a turn runs

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
        self._check_events(path)
        self._state_id = self.bundle.tokenizer.convert_tokens_to_ids(self.bundle.meta.get("state_token", "<STATE>"))
        self._rag_id = self.bundle.tokenizer.convert_tokens_to_ids("<RAG>")
        self._decoder = loaded.model.get_decoder()
        return loaded

    def _load_remote(self, path: Path) -> LoadedModel:
        """Engine sglang: the adapter's tokenizer and heads only; the server has the weights."""
        from persona_agents.engines.sglang_client import SGLangClient, SGLangEngine, load_remote_bundle

        self.bundle = self.runtime.models.shared(("multihead-remote", str(path.resolve()), adapter_stamp(path)),
                                                 lambda: load_remote_bundle(path))
        self._check_events(path)
        self._state_id = self.bundle.tokenizer.convert_tokens_to_ids(self.bundle.meta.get("state_token", "<STATE>"))
        self._rag_id = self.bundle.tokenizer.convert_tokens_to_ids("<RAG>")
        self._decoder = None
        opts = self.options
        client = SGLangClient(str(opts.url), opts.timeout_s, None if opts.lora == "merged" else opts.lora)
        self._remote = SGLangEngine(client, self.bundle.heads.config.hidden_size, path, opts.state_pass)
        return LoadedModel(name=self.bundle.meta["base"]["name"], model=None, tokenizer=self.bundle.tokenizer)

    def _check_events(self, path: Path) -> None:
        """The events this NPC's game declares, of those the adapter predicts (issue 27).

        A generalist adapter is trained on more events than one game uses: the others are
        never proposed. An adapter that knows none of the game's events is an error."""
        from persona_agents.game import GAME_FILE, load_game

        game = load_game(self.runtime.npcs_dir)
        self._declared = [name for name in self.bundle.flags if name in game.events]
        if not self._declared:
            raise StepError(
                f"NPC '{self.persona.id}': adapter {path} predicts {', '.join(self.bundle.flags)}, none of which the "
                f"game in {self.runtime.npcs_dir} declares ({GAME_FILE}); declared events: {', '.join(game.events)}. "
                "Declare them in the game file or use an adapter trained on this game's events.")
        if self.bundle.heads.config.evidence_size and self._evidence_bank is None:
            from persona_agents.multihead.evidence import EventEvidence

            embedder = self.runtime.embedders.get(self.bundle.meta.get("evidence", {}).get("embedder", "embedded"))
            self._evidence_bank = EventEvidence(self.persona, self.bundle.flags, embedder)

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
        key = id(turn.prompt)
        # Read here, on the turn's thread: the decision is taken on the compute thread,
        # which does not see the pipeline's context.
        self._deciders[key] = current_decider()
        if self._evidence_bank is not None:
            # Embedded here, on the turn's thread: the heads may run on the compute thread.
            import torch

            self._evidence[key] = torch.from_numpy(self._evidence_bank.features(turn.utterance))[None]
        try:
            return super().run(turn)
        finally:
            self._evidence.pop(key, None)
            self._decided.pop(key, None)
            self._deciders.pop(key, None)
            self._remote_meta.pop(key, None)

    def engine_name(self) -> str:
        return "sglang" if self._remote is not None else super().engine_name()

    def generate_ids(self, turn, inputs, seed: int):
        if self._remote is None:
            return super().generate_ids(turn, inputs, seed)
        return self._remote_generate(turn, inputs, seed)

    def _remote_generate(self, turn, inputs, seed: int):
        """Engine sglang: the prompt pass on the server up to <STATE>, the heads here, the
        game's decision, then the reply on the server, which finds the prompt in its radix
        cache (see persona_agents/engines/sglang_client.py)."""
        import torch

        from persona_agents.engines.sglang_client import sampling_params

        ids = inputs["input_ids"][0].tolist()
        index = self._state_index(inputs)
        key = id(turn.prompt)
        meta: dict = {}
        row, meta["prompt_pass"] = self._remote.state_pass(ids[: index + 1])
        meta.update(self._remote.check())
        self._remote_meta[key] = meta
        state = torch.tensor(row, dtype=torch.float32)
        heads = on_compute_thread(self._read_heads, turn, state)
        continuation = ids
        if self._deciders.get(key) is not None or turn.prompt.version == 2:
            decision = self._decide(turn, heads)
            if not decision.speak:
                return [], state[None]
            if turn.prompt.version == 2:
                continuation = ids + self._decision_ids(decision)
        tok = self.loaded.tokenizer
        stops = [*self._eos_ids, *(tok.convert_tokens_to_ids(m) for m in turn.prompt.stop_markers)]
        stops = [t for t in stops if isinstance(t, int) and t != tok.unk_token_id]
        sink, on_ids, streamer = current_sink(), None, None
        if sink is not None:
            streamer = MarkerSafeStreamer(tok, sink, (*turn.prompt.stop_markers, *self._special), 0)
            on_ids = lambda new: streamer.put(torch.tensor(new))  # noqa: E731
        new_ids, meta["reply"] = self._remote.reply(continuation, sampling_params(self.persona.generation, seed, stops),
                                                    on_ids)
        if streamer is not None:
            streamer.end()
        return new_ids, state[None]

    def _heads(self, turn, state_rows):
        """The heads on the kept <STATE> row, with the turn's few-shot evidence if they read it."""
        return self.bundle.heads(state_rows.float().cpu(), self._evidence.get(id(turn.prompt)))

    def _state_index(self, inputs) -> int:
        found = (inputs["input_ids"][0] == self._state_id).nonzero()
        if len(found) == 0:
            raise StepError("The prompt has no <STATE> marker token; the sectioned prompt step renders one.")
        return int(found[-1])

    def _low_rank(self) -> dict:
        return self.bundle.low_rank

    def _fast_keep_index(self, inputs) -> int:
        return self._state_index(inputs)

    def _fast_prefix_len(self, inputs, turn) -> int:
        # Version 2 opens with what is the same on every turn of this NPC (persona,
        # events, example lines), up to <RAG>: the engine keeps its cache.
        if turn.prompt.version != 2:
            return 0
        found = (inputs["input_ids"][0] == self._rag_id).nonzero()
        return int(found[0]) if len(found) else 0

    def _fast_after_prefill(self, turn):
        # Decide, then speak: the heads read the <STATE> row as soon as the prompt pass has
        # run; the pipeline's decider applies the game's rules, sends the decision out and
        # says whether the model's words are still needed; a version 2 prompt then gets the
        # decision's tokens before the reply.
        version = turn.prompt.version
        if self._deciders.get(id(turn.prompt)) is None and version == 1:
            return None

        def after(kept):
            decision = self._decide(turn, self._read_heads(turn, kept))
            if not decision.speak:
                return False
            return self._decision_ids(decision) if version == 2 else True

        return after

    def _read_heads(self, turn, kept):
        """The heads on the kept <STATE> row, kept for `_finish` (read once a turn)."""
        heads = self._decided[id(turn.prompt)] = self._heads(turn, kept[None])
        return heads

    def _decide(self, turn, heads) -> Decision:
        """The pipeline's decision, or outside a pipeline the persona's rules on the heads'
        proposals."""
        empty = Generation(text="", model=self.loaded.name, new_tokens=0, finished=True)
        provisional = self._finish(turn.replace(generation=empty), heads)
        decider = self._deciders.get(id(turn.prompt))
        if decider is not None:
            return decider(provisional)
        from persona_agents.rules import enforce

        generation = provisional.generation
        proposed = provisional.replace(flags=tuple(FiredFlag(name) for name in generation.flags),
                                       deltas=generation.deltas)
        return Decision(True, enforce(proposed, self.persona))

    def _decision_ids(self, decision: Decision) -> list[int]:
        """The decision of version 2 (and the lines to ground the reply in), as tokens that
        continue the prompt."""
        text = decision_of_turn(decision.turn, decision.lines)
        return self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _fast_extra(self, job):
        # The fast engine kept the <STATE> row of its prefill's final norm: the same vector
        # the hook below captures on the reference path.
        return job.kept[None]  # the heads run in _finish, with the turn's evidence

    def _generate(self, inputs, kwargs):
        index = self._state_index(inputs)
        captured = []

        def keep_state(module, args, output):
            if not captured:  # the prefill: the first forward, over the whole prompt
                hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
                captured.append(hidden[0, index].clone())

        handle = self._decoder.register_forward_hook(keep_state)
        try:
            output = self.loaded.model.generate(**inputs, **kwargs)
        finally:
            handle.remove()
        return output, captured[0][None]  # the heads run in _finish, with the turn's evidence

    def _reference_generate(self, inputs, kwargs, seed: int, turn=None):
        if turn is None or turn.prompt.version != 2:
            return super()._reference_generate(inputs, kwargs, seed, turn)
        import torch

        inputs = inputs.to(self.loaded.model.device)

        # Version 2 on the transformers engine: the prompt pass, the heads and the decision,
        # then generate continues from the prompt pass's cache with the decision's tokens.
        with self.loaded.lock, torch.inference_mode():
            torch.manual_seed(seed)
            index = self._state_index(inputs)
            captured = []
            handle = self._decoder.register_forward_hook(
                lambda module, args, output: captured.append(
                    (output[0] if isinstance(output, tuple) else output.last_hidden_state)[0, index].clone()))
            try:
                out = self.loaded.model(**inputs, use_cache=True)
            finally:
                handle.remove()
            state = captured[0]
            decision = self._decide(turn, self._read_heads(turn, state))
            if not decision.speak:
                return [], state[None]
            written = torch.tensor([self._decision_ids(decision)], dtype=inputs["input_ids"].dtype,
                                   device=inputs["input_ids"].device)
            full = torch.cat([inputs["input_ids"], written], dim=1)
            streamer = kwargs.get("streamer")
            if streamer is not None:
                streamer._skip = full.shape[1]  # the first put carries prompt and decision
            # transformers 5 calls the prompt pass's cache `cache`, 4.x `past_key_values`.
            name = "cache" if "cache" in out.keys() else "past_key_values"
            output = self.loaded.model.generate(input_ids=full, attention_mask=torch.ones_like(full),
                                                **{name: out[name]}, **kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        return sequences[0, full.shape[1]:].tolist(), state[None]

    def _finish(self, turn, heads):
        if not hasattr(heads, "flag_probs"):  # the kept <STATE> row
            # Read once: where the decision ran after the prompt pass, its heads' output is
            # kept (another trip to the compute thread would wait for whatever runs there).
            decided = self._decided.get(id(turn.prompt))
            heads = decided if decided is not None else on_compute_thread(self._heads, turn, heads)
        # Only the events this NPC's game declares (a generalist adapter knows more).
        flags, thresholds = self._declared, self.bundle.thresholds
        index = [self.bundle.flags.index(name) for name in flags]
        probs = [round(float(heads.flag_probs[0][i]), 6) for i in index]
        trust, relationship = (round(float(d), 4) for d in heads.deltas[0])
        generation = dataclasses.replace(
            turn.generation,
            deltas=Deltas(trust=trust, relationship=relationship),
            flag_probs=dict(zip(flags, probs)),
            flags=tuple(name for name, p in zip(flags, probs) if p >= thresholds[name]),
        )
        remote = self._remote_meta.get(id(turn.prompt))
        return turn.replace(generation=generation).with_meta(
            adapter=self.options.adapter, thresholds_version=self.bundle.meta.get("thresholds_version"),
            **({"sglang": {"url": self._remote.url, **remote}} if remote is not None and self._remote else {}))


@hookimpl
def register_steps(register):
    register(MultiHeadGenerator)
