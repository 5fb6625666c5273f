"""Streaming pieces of a reply: marker-free, in order, and the same text as the reply."""

from __future__ import annotations

from transformers import AutoTokenizer

from persona_agents.markers import REPLY_STOP_MARKERS
from persona_agents.models import embedded_checkpoint
from persona_agents.streaming import MarkerSafeStreamer, stream_to


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


def test_streamed_text_matches_the_reply(sample_manager):
    pieces: list[str] = []
    with stream_to(pieces.append):
        response = sample_manager.turn("guard_city_gate", "Good day, captain.", player_id="stream-1", seed=5)
    streamed = "".join(pieces).strip()
    assert len(pieces) > 3  # it came in pieces, not at the end
    # The reply is the streamed text, trimmed to its last full sentence if it ran out.
    assert streamed and streamed.startswith(response.text)
    quiet = sample_manager.turn("guard_city_gate", "Good day, captain.", player_id="stream-2", seed=5)
    assert quiet.text == response.text  # streaming does not change the reply
