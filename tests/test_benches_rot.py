"""Every bench runs end to end in its --quick mode and prints the figures it promises, so
none can rot unnoticed. Speed targets (ratios) are read by people from the full benches:
nothing here asserts a timing, which would fail on a busy machine for no fault of the code.

The quick runs together take under 2 minutes on 2 shared cores."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO, cli_env

# Each quick run takes seconds to half a minute on 2 idle cores, several times that on a
# busy shared machine.
pytestmark = pytest.mark.timeout(660)


def run_quick(script: str) -> tuple[dict[str, str], str]:
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = dict(re.findall(r"(?:^|\s)([a-z][a-z0-9_]*)=(\S+)", result.stdout, flags=re.MULTILINE))
    assert figures.get("mode") == "quick", result.stdout
    return figures, result.stdout


def assert_figures(figures: dict[str, str], numeric: tuple[str, ...], other: tuple[str, ...] = ()) -> None:
    for key in (*numeric, *other):
        assert key in figures, f"{key} not printed; got {sorted(figures)}"
    for key in numeric:
        float(figures[key])  # a number (its value is a measurement, never asserted)


@pytest.mark.model
def test_turn_overhead_quick():
    figures, _ = run_quick("turn_overhead.py")
    assert_figures(figures, ("prompt_tokens", "new_tokens", "rounds", "pipeline_s_median", "bare_generate_s_median",
                             "overhead_ratio"), ("npc", "engine"))
    assert int(figures["new_tokens"]) > 0  # the transformers engine always speaks: both sides decode


@pytest.mark.model
def test_heads_overhead_quick():
    figures, stdout = run_quick("heads_overhead.py")
    assert_figures(figures, ("new_tokens", "rounds", "heads_ratio", "seed_two_pass_ratio", "matcher_ratio"),
                   ("engine",))
    for variant in ("heads:", "no heads:", "seed two-pass:", "no matcher:"):
        assert variant in stdout


@pytest.mark.model
def test_batching_quick():
    figures, stdout = run_quick("batching.py")
    assert_figures(figures, ("turns", "new_tokens", "rounds", "tokens_per_s", "prefill_s", "decode_s",
                             "decode_steps", "ms_per_step", "max_turns_in_one_step", "batch8_tokens_per_s_ratio"),
                   ("prompt_tokens",))
    assert "sequential:" in stdout and "concurrent:" in stdout


@pytest.mark.model
def test_transformers_batching_quick():
    figures, stdout = run_quick("transformers_batching.py")
    assert_figures(figures, ("turns", "new_tokens", "rounds", "largest_batch", "sequential_tokens_per_s",
                             "concurrent_tokens_per_s", "transformers_batch8_ratio"), ("device", "dtype"))
    # Behaviour, not speed: eight turns submitted at once were served in shared batches.
    assert int(figures["largest_batch"]) > 1


@pytest.mark.model
def test_cold_start_quick():
    figures, _ = run_quick("cold_start.py")
    assert_figures(figures, ("manager_s", "serve_s", "run_dialogue_s", "ready_s"))


def test_lore_retrieval_quick():
    figures, _ = run_quick("lore_retrieval.py")
    assert_figures(figures, ("entries", "dimension", "query_p50_ms", "query_scoped_p50_ms", "query_p50_ms_all_threads",
                             "recall_at_5", "recall_at_5_scoped", "build_entries_per_s", "add_vectors_per_s"))


@pytest.mark.model
def test_server_throughput_quick():
    figures, _ = run_quick("server_throughput.py")
    assert_figures(figures, ("turns_c1", "turns_c8", "stream_turns", "new_tokens_mean_c1", "new_tokens_mean_c8",
                             "latency_ms_p50_c1", "latency_ms_p50_c8", "stream_total_ms_p50", "turns_per_s_c1",
                             "turns_per_s_c8", "scaling_c8", "ttft_ms_p50"), ("npc",))


def test_state_store_quick():
    figures, _ = run_quick("state_store.py")
    assert_figures(figures, ("turns", "players", "seconds", "turn_commits_per_s"))


def test_train_speed_quick():
    # A tiny random model (a step on the real one takes tens of seconds): mechanics only.
    figures, stdout = run_quick("train_speed.py")
    assert_figures(figures, ("steps", "batch_size"), ("base",))
    assert " none: median" in stdout
    assert "nf4_over_fp32" in figures or "4-bit NF4 was not available" in stdout


@pytest.mark.model
def test_vs_llamacpp_quick_never_builds_and_says_when_llamacpp_is_missing():
    figures, stdout = run_quick("vs_llamacpp.py")
    assert_figures(figures, ("prompt_tokens", "new_tokens", "threads", "runs", "ours_s",
                             "heads_max_abs_diff_vs_float32"), ("greedy_replies_same_as_float32",))
    assert "Installing" not in stdout  # --quick never builds llama.cpp
    assert_figures(figures, ("conversation_turns", "ours_conversation_s"))
    assert "turn 2: prompt" in stdout and "static prefix" in stdout
    if figures.get("llamacpp_s") == "n/a":
        assert figures["vs_llamacpp_ratio"] == "n/a" and figures["vs_llamacpp_multiturn_ratio"] == "n/a"
        assert "measuring our side only" in stdout and "--install-llamacpp" in stdout
    else:
        assert_figures(figures, ("llamacpp_s", "vs_llamacpp_ratio", "llamacpp_conversation_s",
                                 "vs_llamacpp_multiturn_ratio"))


@pytest.mark.model
def test_prompt_v2_cost_quick():
    figures, _ = run_quick("prompt_v2_cost.py")
    assert_figures(figures, ("prompt_tokens_v1", "prompt_tokens_v2", "prefix_tokens_v2", "v1_s", "v2_s", "v2_cold_s",
                             "v2_ratio", "v2_cold_ratio"))
    assert int(figures["prefix_hits"]) >= 3  # every counted v2 turn found its NPC's prefix cached


@pytest.mark.model
def test_memory_recall_quick():
    figures, _ = run_quick("memory_recall.py")
    assert_figures(figures, ("turns", "compared_turns", "memories_held", "turns_with_recall", "turn_s_with_recall",
                             "turn_s_without", "recall_ms_median", "memory_turn_ratio"), ("npc",))
    assert int(figures["memories_held"]) > 0  # the script's facts were condensed into memories


@pytest.mark.model
def test_prefix_cache_quick():
    figures, _ = run_quick("prefix_cache.py")
    assert_figures(figures, ("turns", "prefix_hits", "prefix_misses", "ttft_s_cached", "ttft_s_uncached",
                             "ttft_ratio"), ("npc",))
    assert int(figures["prefix_hits"]) >= 1  # the second turn found its NPC's prefix cached
    assert figures["reply_source"] == "model"  # the first token timed is the model's
