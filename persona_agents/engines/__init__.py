"""The engines that run an NPC's model, behind one contract (issue 28; `contract.py`).

- `fast`: the lean CPU decoder of persona_agents/fastpath, with continuous batching;
- `transformers_engine`: transformers on any device, concurrent turns batched;
- `sglang_client`: a remote SGLang server (`engine: sglang` of the multihead step).
"""
