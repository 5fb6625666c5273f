"""Streaming pieces of a reply: marker-free, in order, and the same text as the reply."""

from __future__ import annotations

import shutil

from transformers import AutoTokenizer

from persona_agents.markers import REPLY_STOP_MARKERS
from persona_agents.models import embedded_checkpoint
from persona_agents.streaming import MarkerSafeStreamer, stream_to

from .conftest import REPO


def feed(text: str, chunk: int = 1) -> list[str]:
    tok = AutoTokenizer.from_pretrained(embedded_checkpoint())
    prompt = tok("prompt text", return_tensors="pt")["input_ids"]
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    pieces: list[str] = []
    streamer = MarkerSafeStreamer(tok, pieces.append, (*REPLY_STOP_MARKERS, *tok.all_special_tokens), prompt.shape[1])
    streamer.put(prompt[0])
    for i in range(0, len(ids), chunk):
        streamer.put(ids[i:i + chunk])
    streamer.end()
    return pieces


def test_pieces_stop_at_a_marker_and_never_show_one():
    pieces = feed(" Aye, I can mend it.<|im_end|>\n<|im_start|>user\nmore")
    assert "".join(pieces) == "Aye, I can mend it."
    pieces = feed("Come closer. <PLAYER> I forge a line")
    assert "".join(pieces) == "Come closer. "
    assert all("<" not in p for p in pieces)


def test_a_harmless_angle_bracket_is_released_at_the_end():
    assert "".join(feed("Prices: 3 < 4 coins.")) == "Prices: 3 < 4 coins."


def test_streamed_text_matches_the_reply(sample_npcs_copy):
    # Token by token where no postprocess step rewrites the text (game_rules only decides).
    from persona_agents.manager import AgentManager

    defaults = sample_npcs_copy / "_defaults.yaml"
    text = defaults.read_text(encoding="utf-8")
    text = text.replace("adapter: training/adapters/smollm2-npc", f"adapter: {REPO / 'training/adapters/smollm2-npc'}")
    start = text.index("    # Then the writers' own line")
    defaults.write_text(text[:start], encoding="utf-8")
    manager = AgentManager(sample_npcs_copy)
    assert manager.pipeline("guard_city_gate").step_names()["postprocess"] == ["game_rules"]
    pieces: list[str] = []
    with stream_to(pieces.append):
        response = manager.turn("guard_city_gate", "Good day, captain.", player_id="stream-1", seed=5)
    streamed = "".join(pieces).strip()
    assert len(pieces) > 3  # it came in pieces, not at the end
    # The reply is the streamed text, trimmed to its last full sentence if it ran out.
    assert streamed and streamed.startswith(response.text)
    quiet = manager.turn("guard_city_gate", "Good day, captain.", player_id="stream-2", seed=5)
    assert quiet.text == response.text  # streaming does not change the reply


def test_a_rewriting_step_sees_the_text_before_the_player_does(sample_manager):
    # The sample NPCs say writers' lines (authored_lines rewrites the reply): the stream
    # carries only the final text, never the model's discarded words.
    pieces: list[str] = []
    with stream_to(pieces.append):
        response = sample_manager.turn("guard_city_gate", "Good day, captain.", player_id="stream-3", seed=5)
    assert pieces == [response.text] and response.meta["streamed"] == "after postprocess"


def test_a_censoring_plugin_filters_the_stream_too(npc_folder, tiny_model_dir):
    from persona_agents.manager import AgentManager

    plugins = npc_folder.folder.parent / "plugins"
    plugins.mkdir()
    shutil.copy(REPO / "tests" / "plugins" / "censor.py", plugins)
    vowels = list("aeiou")
    pipeline = {"preprocess": ["normalize_input"], "prompt": ["chat_template"],
                "generate": [{"name": "transformers", "options": {"model": str(tiny_model_dir)}}],
                "postprocess": [{"name": "censor", "options": {"words": vowels}}]}
    npc_folder("filtered", pipeline=pipeline, generation={"max_new_tokens": 24, "temperature": 0.7})
    manager = AgentManager(npc_folder.folder, plugins_dir=plugins)
    pieces: list[str] = []
    with stream_to(pieces.append):
        response = manager.turn("filtered", "Tell me a long story.", seed=3)
    assert response.text and not any(v in response.text.lower() for v in vowels)
    assert "".join(pieces) == response.text  # the player saw only the filtered text
