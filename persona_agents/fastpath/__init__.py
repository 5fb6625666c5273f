"""The fast engine: CPU generation for llama-family models without transformers' overhead.

- `decoder.py`: the lean decoder (fused weights, quantized decode steps, a slotted
  key/value cache) over an already loaded model's own weights;
- `sampling.py`: the next-token choice, as transformers' logits processors make it;
- `engine.py`: continuous batching of concurrent turns;
- `compute.py`: the one thread that runs a process's torch work, and why;
- `skeleton.py`, `lean_tokenizer.py`: a llama checkpoint's weights and its tokenizer
  read without importing transformers, so a fast-engine start skips its imports;
- `packcache.py`: quantized weights packed once, kept on disk.

The generate steps (`transformers`, `multihead`) use it through their `engine` option.
"""
