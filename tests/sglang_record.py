"""Rebuild tests/data/sglang/exchange.json: one turn of the seed game's elder through `engine: sglang`,
answered by `tests/sglang_support.ModelBacked` (the seed adapter merged into the
embedded SmolLM2, run here as SGLang runs it), in SGLang 0.5.23's request and response
shapes (see README.md). Run from the repository root:

    .venv/bin/python -m tests.sglang_record

It also runs the same turn on the fast engine (float32) and prints both, which must agree.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from persona_agents.manager import AgentManager
from persona_agents.multihead.artifacts import load_adapter
from persona_agents.turn import GameContext
from tests.sglang_support import DATA, FakeSGLang, ModelBacked, seed_game

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed_game"
NPC, LINE, STAGE = "elder_mossbrook", "Hello, elder. Is all well in the village?", "not_started"




class Recorder:
    def __init__(self, inner):
        self.inner, self.log = inner, []

    def respond(self, method, path, body):
        status, payload = self.inner.respond(method, path, body)
        self.log.append({"request": {"method": method, "path": path, "body": body},
                         "response": {"status": status, "body": payload}})
        return status, payload


def main() -> None:
    bundle = load_adapter(SEED / "adapters" / "seed-tiny", None, "float32", merge=True, lean=False)
    eos = bundle.model.generation_config.eos_token_id
    responder = Recorder(ModelBacked(bundle.model, model_path="/models/seed-tiny-merged",
                                     eos_ids=eos if isinstance(eos, list) else [eos]))
    server = FakeSGLang(responder)
    with tempfile.TemporaryDirectory() as tmp:
        turns = {}
        for engine, options in (("sglang", {"engine": "sglang", "url": server.url}),
                                ("fast", {"engine": "fast", "decode_precision": "float32"})):
            manager = AgentManager(seed_game(Path(tmp) / engine, **options))
            turns[engine] = manager.turn(NPC, LINE, player_id="record", seed=3, context=GameContext(quest_stage=STAGE))
        # The reply again, streamed (the server's stream answer for the same request).
        reply = next(e for e in responder.log if e["request"]["path"] == "/generate"
                     and "stop_token_ids" in e["request"]["body"]["sampling_params"])
        _, stream = responder.inner.respond("POST", "/generate", {**reply["request"]["body"], "stream": True})
    server.close()
    for engine, turn in turns.items():
        print(engine, repr(turn.text), turn.deltas, turn.flag_probs)
    generate = [e for e in responder.log if e["request"]["path"] == "/generate"]
    before, state, reply = generate
    info = {"version": "0.5.23", "model_path": "/models/seed-tiny-merged", "tokenizer_path": "/models/seed-tiny-merged",
            "skip_tokenizer_init": False, "enable_return_hidden_states": True, "return_hidden_states_mode": "full",
            "enable_lora": None, "lora_paths": None, "disable_radix_cache": False, "page_size": 1,
            "chunked_prefill_size": 8192, "incremental_streaming_output": False, "frontend": "python"}
    model_info = {"model_path": "/models/seed-tiny-merged", "served_model_name": "/models/seed-tiny-merged",
                  "tokenizer_path": "/models/seed-tiny-merged", "is_generation": True,
                  "preferred_sampling_params": None, "weight_version": "default", "load_format": "auto",
                  "reasoning_parser": None, "tool_call_parser": None, "disaggregation_mode": "null",
                  "has_image_understanding": False, "has_audio_understanding": False, "model_type": "llama",
                  "architectures": ["LlamaForCausalLM"]}
    tok = bundle.tokenizer
    for entry in (before, state, reply):  # SGLang's text: the output less a matched stop token
        body = entry["response"]["body"]
        ids, finish = body["output_ids"], body["meta_info"]["finish_reason"]
        trimmed = ids[:-1] if isinstance(finish.get("matched"), int) else ids
        body["text"] = tok.decode(trimmed, skip_special_tokens=False)
    # SGLang's request ids are uuid4 hex strings; a streamed answer's last chunk has the whole text.
    rids = iter(["6f1c0b9e2d8a4c57b3e9a1f0d2c4e6a8", "0a7d3c5e9b1f4e26a8c0d2b4f6e8a1c3",
                 "c2e4a6b8d0f14a3c5e7b9d1f3a5c7e9b", "9e8d7c6b5a4f4e3d2c1b0a9f8e7d6c5b"])
    for entry in (before, state, reply):
        entry["response"]["body"]["meta_info"]["id"] = next(rids)
    rid = next(rids)
    for chunk in stream[:-1]:
        chunk["meta_info"]["id"] = rid
    stream[-2]["text"] = reply["response"]["body"]["text"]
    record = {
        "sglang_version": "0.5.23",
        "note": "Built from SGLang 0.5.23's source (see README.md), values computed by "
                "tests/sglang_support.ModelBacked on the seed adapter merged into the embedded SmolLM2; not captured "
                "from a live server.",
        "turn": {"npc": NPC, "line": LINE, "quest_stage": STAGE, "seed": 3},
        # The same turn on the fast engine (float32), which the sglang engine must give back.
        "fast_engine_turn": {"text": turns["fast"].text, "deltas": turns["fast"].deltas.to_dict(),
                             "flag_probs": turns["fast"].flag_probs},
        "exchange": {
            "server_info": {"request": {"method": "GET", "path": "/server_info"},
                            "response": {"status": 200, "body": info}},
            "model_info": {"request": {"method": "GET", "path": "/model_info"},
                           "response": {"status": 200, "body": model_info}},
            "before_state": before, "state_pass": state, "reply": reply,
            "reply_stream": {"request": {"method": "POST", "path": "/generate",
                                         "body": {**reply["request"]["body"], "stream": True}},
                             "response": {"status": 200, "body": [json.dumps(c) if isinstance(c, dict) else c
                                                                  for c in stream]}},
            # SGLang 0.5.23 tokenizer_manager.py (_validate_one_request) and lora_registry.py, through
            # http_server.py _create_error_response: HTTP 400 {"error": {"message": str(ValueError)}}.
            "hidden_states_disabled": {"request": {"method": "POST", "path": "/generate"}, "response": {
                "status": 400, "body": {"error": {"message": (
                    "The server is not configured to return hidden states. Please set `--return-hidden-states-mode "
                    "last`, `--return-hidden-states-mode full`, or the legacy `--enable-return-hidden-states` "
                    "flag.")}}}},
            "lora_not_loaded": {"request": {"method": "POST", "path": "/generate"}, "response": {
                "status": 400, "body": {"error": {"message": (
                    "The following requested LoRA adapters are not loaded: elder\nLoaded adapters: "
                    "odict_keys(['guard']).")}}}},
        },
    }
    (DATA / "exchange.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print("wrote", DATA / "exchange.json")


if __name__ == "__main__":
    main()
