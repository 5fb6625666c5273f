"""Training speed of the multi-head model: 4-bit NF4 base (QLoRA) vs full-precision base.

Both models train on the same batches of the real data (forward, the three losses,
backward, optimizer step: what one `MultiHeadTrainer` step does), alternating step by
step so machine noise hits both alike. Prints seconds per step and examples per second
for each, and `nf4_over_fp32=<median nf4 step / median fp32 step>`.

    python bench/train_speed.py [--quick] [--data training/data/train.jsonl] [--steps 6] [--batch-size 4]

`--quick` (a smoke run that only shows the bench still works, not a figure to read): a
step on the real model takes tens of seconds here, so the quick mode trains a tiny random
2-layer Llama with the embedded model's tokenizer (as the tests' `tiny_model_dir`), 2 steps
of 2 examples. Its figures say nothing about the real model's speed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# As `persona-agents train` does: idle OpenMP threads sleep instead of spinning, which on
# a CPU shared with other processes was 4-7x faster per step (see training/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "training/data/train.jsonl"))
    parser.add_argument("--base", default="embedded")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--history-turns", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random model, 2 steps of 2 examples (a smoke run)")
    args = parser.parse_args()

    import torch

    from persona_agents.flags import DEFAULT_FLAGS
    from persona_agents.multihead.collator import EncodedDataset, MultiHeadCollator
    from persona_agents.multihead.data import load_examples, load_personas_for_data
    from persona_agents.multihead.heads import multihead_losses
    from persona_agents.multihead.modeling import build_trainable_model

    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        args.base, args.steps, args.batch_size = tiny_model(Path(tmp.name)), 2, 2
    examples = load_examples([args.data], DEFAULT_FLAGS, load_personas_for_data(REPO / "npcs"))
    random.Random(0).shuffle(examples)
    sides = {}
    for quant in ("nf4", "none"):
        torch.manual_seed(0)
        built = build_trainable_model(args.base, DEFAULT_FLAGS, quantization=quant)
        model = built.model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        sides[built.quantization] = (model, opt)
    tok = built.tokenizer
    data = EncodedDataset(examples[: args.batch_size * (args.steps + 1)], tok, DEFAULT_FLAGS, args.max_length,
                          args.history_turns)
    collate = MultiHeadCollator(tok.pad_token_id)
    batches = [collate([data[i] for i in range(s * args.batch_size, (s + 1) * args.batch_size)])
               for s in range(args.steps + 1)]
    tokens = [int(b["attention_mask"].sum()) for b in batches]

    def step(name, batch):
        model, opt = sides[name]
        started = time.perf_counter()
        inputs = {k: v for k, v in batch.items() if k not in ("delta", "flags")}
        losses = multihead_losses(model(**inputs), batch["delta"], batch["flags"])
        (losses.lm + 10 * losses.delta + losses.flag).backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - started

    for name in sides:  # warm-up
        step(name, batches[0])
    times = {name: [] for name in sides}
    for s in range(1, args.steps + 1):
        for name in (sides if s % 2 else reversed(list(sides))):
            times[name].append(step(name, batches[s]))
    per_step_tokens = statistics.mean(tokens[1:])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>5}: median {median:.2f} s/step, {args.batch_size / median:.2f} examples/s, "
              f"{per_step_tokens / median:.0f} tokens/s  (steps: {', '.join(f'{v:.2f}' for v in values)})")
    if "nf4" in times and "none" in times:
        print(f"nf4_over_fp32={statistics.median(times['nf4']) / statistics.median(times['none']):.3f}")
    else:
        print("4-bit NF4 was not available: only the full-precision base was measured")
    print(f"base={'tiny-random' if args.quick else args.base} steps={args.steps} batch_size={args.batch_size} "
          f"mode={'quick' if args.quick else 'full'}")
    if tmp is not None:
        tmp.cleanup()


def tiny_model(folder: Path) -> str:
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer, saved in
    `folder` (the recipe of tests/conftest.py's `tiny_model_dir`)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from persona_agents.models import embedded_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


if __name__ == "__main__":
    main()
