"""`fast`: the lean CPU decoder (persona_agents/fastpath) behind the engine contract.

The batching, prefix cache and decide-then-speak are the BatchEngine's own; this only
turns an EngineRequest into its GenerationJob and back.
"""

from __future__ import annotations

from persona_agents.engines.contract import EngineRequest, EngineResult, ends_at_marker


class FastEngine:
    name = "fast"

    def __init__(self, batch, tokenizer, decode_precision: str):
        self.batch = batch  # the shared persona_agents.fastpath.engine.BatchEngine
        self.tokenizer = tokenizer
        self.decode_precision = decode_precision

    def run(self, request: EngineRequest) -> EngineResult:
        from persona_agents.fastpath.engine import GenerationJob
        from persona_agents.fastpath.sampling import SamplingSettings

        tok, markers, on_ids = self.tokenizer, request.stop_markers, request.on_ids
        s = request.sampling
        job = GenerationJob(
            prompt_ids=list(request.prompt_ids),
            max_new_tokens=s.max_new_tokens,
            sampling=SamplingSettings(temperature=s.temperature, top_p=s.top_p,
                                      repetition_penalty=s.repetition_penalty),
            seed=request.seed,
            eos_ids=frozenset(request.eos_ids),
            # Stop once a marker appears in the reply's text, as transformers' stop strings do.
            should_stop=(lambda ids: ends_at_marker(tok, ids, markers)) if markers else None,
            keep_index=request.state_index,
            prefix_len=request.prefix_len,
            after_prefill=request.after_prefill,
            on_token=(lambda token: on_ids([token])) if on_ids is not None else None,
        )
        self.batch.generate(job)
        state = job.kept.float() if job.kept is not None else None
        return EngineResult(list(job.new_ids), state, {"decode_precision": self.decode_precision})
