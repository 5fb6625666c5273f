"""Engines that run an NPC's model somewhere other than this process (issue 28).

- `sglang_client`: a remote SGLang server (`engine: sglang` of the multihead step).
"""
