"""`engine: sglang` of the multihead step, against SGLang's native HTTP API on loopback.

- the recorded exchange (tests/data/sglang/exchange.json, SGLang 0.5.23's shapes; see the
  README there): a real turn of the seed game's elder, whose tokenizer and heads run here
  and whose model "runs" on the server: the requests carry the exact prompt ids, the
  heads read the recorded `<STATE>` row, the reply request carries the decision's
  tokens, and the turn is the one the fast engine gives for the same prompt;
- the errors a game developer meets, each naming the URL and the fix;
- a tiny adapter exported merged (`export_merged`) and served by a stand-in that runs it
  as SGLang does: the same turn as the local engines (transformers and fast, float32).

No live SGLang server runs here (no GPU in this session's machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persona_agents.errors import PersonaAgentsError
from persona_agents.manager import AgentManager
from persona_agents.turn import GameContext

from .sglang_support import FakeSGLang, ModelBacked, Replay, recording, seed_game

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed_game"
ADAPTER = SEED / "adapters" / "seed-tiny"
RECORD = recording()




def recorded_turn(npcs: Path):
    turn = RECORD["turn"]
    return AgentManager(npcs).turn(turn["npc"], turn["line"], player_id="sglang-test", seed=turn["seed"],
                                   context=GameContext(quest_stage=turn["quest_stage"]))


@pytest.fixture
def replay():
    servers = []

    def start(**overrides) -> FakeSGLang:
        server = FakeSGLang(Replay(**overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def recorded_body(name: str) -> dict:
    return RECORD["exchange"][name]["request"]["body"]


def test_a_turn_on_the_recorded_exchange_sends_exact_ids_and_reads_the_recorded_state(tmp_path, replay):
    from persona_agents.engines.sglang_client import load_remote_bundle

    server = replay()
    response = recorded_turn(seed_game(tmp_path / "game", engine="sglang", url=server.url))

    before, state, reply = server.generate_requests()
    bundle = load_remote_bundle(ADAPTER)
    state_id = bundle.tokenizer.convert_tokens_to_ids("<STATE>")
    # The prompt pass: the prompt's ids up to and including <STATE>, the part before it first.
    assert state["input_ids"][-1] == state_id and state_id not in state["input_ids"][:-1]
    assert before["input_ids"] == state["input_ids"][:-1] and "return_hidden_states" not in before
    assert state["return_hidden_states"] is True and state["sampling_params"] == {"max_new_tokens": 1,
                                                                                  "temperature": 0.0}
    # The reply: the whole prompt, then the game's decision, then <NPC>.
    assert reply["input_ids"][: len(state["input_ids"])] == state["input_ids"]
    written = bundle.tokenizer.decode(reply["input_ids"][len(state["input_ids"]):])
    assert written == "\n<DECISION> none\n<NPC>"
    assert set(reply["sampling_params"]) == {"max_new_tokens", "temperature", "top_p", "repetition_penalty",
                                             "stop_token_ids", "skip_special_tokens", "sampling_seed"}
    assert {bundle.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<PLAYER>", "<NPC>")} <= set(
        reply["sampling_params"]["stop_token_ids"])
    # Exactly the recorded requests (the recording was made from this prompt; if the seed
    # game's persona changed, re-record: python -m tests.sglang_record).
    for sent, name in ((before, "before_state"), (state, "state_pass"), (reply, "reply")):
        assert sent == recorded_body(name), f"{name} differs from the recording"

    # The heads read the recorded <STATE> row: the turn is the fast engine's for this prompt.
    import torch

    row = RECORD["exchange"]["state_pass"]["response"]["body"]["meta_info"]["hidden_states"][0][-1]
    with torch.inference_mode():
        heads = bundle.heads(torch.tensor([row]))
    probs = [round(float(p), 6) for p in heads.flag_probs[0]]
    assert response.flag_probs == dict(zip(bundle.flags, probs))
    expected = RECORD["fast_engine_turn"]
    assert response.text == expected["text"]
    assert response.flag_probs == expected["flag_probs"] and response.deltas.to_dict() == expected["deltas"]

    meta = response.meta
    assert meta["engine"] == "sglang" and meta["model"] == "embedded:smollm2-135m-instruct"
    assert meta["sglang"] == {
        "url": server.url, "version": "0.5.23", "served_model": "/models/seed-tiny-merged",
        "adapter_check": "unverified",
        "prompt_pass": {"requests": 2, "prompt_tokens": 563, "cached_tokens": 0, "hidden_rows": 1,
                        "ms": meta["sglang"]["prompt_pass"]["ms"]},
        # The reply request found the whole prompt pass in SGLang's radix cache.
        "reply": {"prompt_tokens": 568, "cached_tokens": 563, "completion_tokens": 8,
                  "finish_reason": {"type": "stop", "matched": 2}, "ms": meta["sglang"]["reply"]["ms"]},
    }
    assert [path for _, path, _ in server.requests[:2]] == ["/server_info", "/model_info"]


def test_a_streamed_turn_sends_the_reply_in_pieces(tmp_path, replay):
    from persona_agents.streaming import stream_to

    server = replay()
    pieces: list[str] = []
    with stream_to(pieces.append):
        response = recorded_turn(seed_game(tmp_path / "game", engine="sglang", url=server.url))
    assert server.generate_requests()[-1]["stream"] is True
    assert len(pieces) > 3 and "".join(pieces).strip() == response.text == RECORD["fast_engine_turn"]["text"]


def test_state_pass_single_sends_one_request_before_the_reply(tmp_path, replay):
    server = replay()
    response = recorded_turn(seed_game(tmp_path / "game", engine="sglang", url=server.url, state_pass="single"))
    state, reply = server.generate_requests()
    assert state["return_hidden_states"] is True and reply["input_ids"][: len(state["input_ids"])] == state[
        "input_ids"]
    assert response.meta["sglang"]["prompt_pass"]["requests"] == 1
    assert response.flag_probs == RECORD["fast_engine_turn"]["flag_probs"]


def _error(name: str):
    entry = RECORD["exchange"][name]["response"]
    return entry["status"], entry["body"]


def _with(name: str, **changes):
    entry = RECORD["exchange"][name]["response"]
    body = json.loads(json.dumps(entry["body"]))
    for key, value in changes.items():
        if key == "meta_info":
            body["meta_info"].update(value)
        else:
            body[key] = value
    return entry["status"], body


def _state_without_hidden_states():
    status, body = _with("state_pass")
    del body["meta_info"]["hidden_states"]
    return status, body


def _info(**changes):
    return _with("server_info", **changes)


ROW = RECORD["exchange"]["state_pass"]["response"]["body"]["meta_info"]["hidden_states"][0][-1]


@pytest.mark.parametrize(("overrides", "options", "message"), [
    ({"state_pass": _error("hidden_states_disabled")}, {},
     r"does not return hidden states .*not configured.*Restart it with --enable-return-hidden-states"),
    ({"state_pass": _state_without_hidden_states()}, {},
     r"answered without hidden states: restart it with --enable-return-hidden-states"),
    ({"server_info": _info(enable_return_hidden_states=False, return_hidden_states_mode=None)}, {},
     r"was started without hidden states.*--enable-return-hidden-states"),
    ({"server_info": _info(enable_return_hidden_states=False, return_hidden_states_mode="last")}, {},
     r"--return-hidden-states-mode last, which the HTTP API cannot ask for"),
    ({"server_info": _info(version="0.5.16")}, {}, r"runs SGLang 0\.5\.16; the sglang engine needs 0\.5\.17 or newer"),
    ({"state_pass": _with("state_pass", meta_info={"hidden_states": [[ROW[:64]]]})}, {},
     r"hidden states of size 64, but the heads of adapter .*seed-tiny read size 576: the server serves another "
     r"model\. Serve the adapter merged"),
    ({"state_pass": _with("state_pass", meta_info={"hidden_states": [[ROW, ROW, ROW]]})}, {},
     r"returned 3 prompt hidden-state rows for a pass that computed 1 of 563 tokens"),
    ({"before_state": _error("lora_not_loaded")}, {"lora": "elder"},
     r"has no LoRA adapter 'elder' \(400: The following requested LoRA adapters are not loaded: elder"),
])
def test_server_problems_are_clear_errors(tmp_path, replay, overrides, options, message):
    server = replay(**overrides)
    npcs = seed_game(tmp_path / "game", engine="sglang", url=server.url, **options)
    with pytest.raises(PersonaAgentsError, match=message) as caught:
        recorded_turn(npcs)
    assert server.url in str(caught.value)


def test_an_unreachable_server_names_the_url_and_how_to_start_one(tmp_path):
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}"
    npcs = seed_game(tmp_path / "game", engine="sglang", url=url, timeout_s=5)
    with pytest.raises(PersonaAgentsError, match=rf"SGLang server at {url} is unreachable .*--enable-return-hidden-"
                                                 r"states.*fix the multihead step's `url` option"):
        recorded_turn(npcs)


def test_engine_sglang_without_a_url_is_a_persona_error(tmp_path):
    npcs = seed_game(tmp_path / "game", engine="sglang")
    with pytest.raises(PersonaAgentsError, match=r"engine 'sglang' needs `url`"):
        recorded_turn(npcs)


def test_the_gate_refuses_what_sglang_refuses():
    # The stand-in refuses unknown sampling keys like SGLang 0.5.23's HTTP gate: so every
    # request the tests above let through has keys SGLang knows.
    from persona_agents.engines.sglang_client import SGLangClient, SGLangError

    server = FakeSGLang(Replay())
    try:
        client = SGLangClient(server.url, 5)
        with pytest.raises(SGLangError, match=r"refused the request \(400: unknown field `seed`"):
            client.generate([1, 2, 3], {"max_new_tokens": 1, "seed": 3})
    finally:
        server.close()


# -- a tiny adapter, exported merged and served the way SGLang serves it -----------------------

FLAGS = ["give_item", "give_hint", "unlock_hidden_path"]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """An adapter on the tiny random Llama: random LoRA factors, marker rows and heads."""
    import torch

    from persona_agents.multihead.artifacts import save_artifacts
    from persona_agents.multihead.modeling import build_trainable_model

    built = build_trainable_model(str(tiny_model_dir), FLAGS, quantization="none", lora_r=2, prompt_version=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name or name.startswith("heads."):
                param.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("tiny-adapter")
    save_artifacts(out, built.model.lm, built.model.heads, built.tokenizer, {
        "flags": FLAGS, "thresholds": dict.fromkeys(FLAGS, 0.5), "base": built.base, "history_turns": 4,
        "prompt_format_version": 2})
    return out


def tiny_npcs(root: Path, tiny_adapter: Path, **options) -> Path:
    npcs = root / "npcs"
    npcs.mkdir(parents=True)
    persona = {
        "id": "anna", "name": "Anna", "role": "a test character.",
        "pipeline": {"prompt": ["sectioned"], "postprocess": ["game_rules"],
                     "generate": [{"name": "multihead", "options": {"adapter": str(tiny_adapter), **options}}]},
        "generation": {"max_new_tokens": 6, "temperature": 0.0, "repetition_penalty": 1.0},
    }
    (npcs / "anna.yaml").write_text(yaml.safe_dump(persona))
    return npcs


def test_a_merged_export_served_like_sglang_gives_the_local_engines_turn(tiny_adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from persona_agents.engines.sglang_client import EXPORT_FILE, adapter_digest, export_merged

    out = export_merged(tiny_adapter, tmp_path / "merged", dtype="float32")
    assert json.loads((out / EXPORT_FILE).read_text())["adapter_digest"] == adapter_digest(tiny_adapter)
    served = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    server = FakeSGLang(ModelBacked(served, model_path=str(out), eos_ids=[2]))
    try:
        turns = {}
        for name, options in (("sglang", {"engine": "sglang", "url": server.url}),
                              ("transformers", {"engine": "transformers"}),
                              ("fast", {"engine": "fast", "decode_precision": "float32"})):
            manager = AgentManager(tiny_npcs(tmp_path / name, tiny_adapter, **options))
            turns[name] = manager.turn("anna", "Hello there, can you help me?", player_id="p", seed=1)
    finally:
        server.close()
    remote, reference = turns["sglang"], turns["transformers"]
    assert remote.meta["sglang"]["adapter_check"] == "export of this adapter"
    assert remote.meta["engine"] == "sglang" and reference.meta["engine"] == "transformers"
    for local in (reference, turns["fast"]):
        assert remote.text == local.text
        assert remote.deltas.trust == pytest.approx(local.deltas.trust, abs=1e-3)
        assert remote.deltas.relationship == pytest.approx(local.deltas.relationship, abs=1e-3)
        assert remote.flag_probs == pytest.approx(local.flag_probs, abs=1e-4)


def test_a_server_serving_another_adapters_export_is_refused(tiny_adapter, tmp_path, replay):
    from persona_agents.engines.sglang_client import EXPORT_FILE

    other = tmp_path / "other-export"
    other.mkdir()
    (other / EXPORT_FILE).write_text(json.dumps({"adapter": "/adapters/guard", "adapter_digest": "0" * 24}))
    server = replay(model_info=_with("model_info", model_path=str(other)))
    npcs = tiny_npcs(tmp_path / "game", tiny_adapter, engine="sglang", url=server.url)
    with pytest.raises(PersonaAgentsError, match=rf"serves {other}, a merged export of adapter /adapters/guard, not "
                                                 rf"of {tiny_adapter}\. Export this adapter"):
        AgentManager(npcs).turn("anna", "Hello", player_id="p", seed=1)


def test_an_adapter_trained_in_float32_loads_on_a_bfloat16_base(tiny_adapter):
    # The base check compares a checksum of the first embedding rows: read as stored
    # (float32), not after the cast, or every bfloat16 load would be refused.
    import torch

    from persona_agents.multihead.artifacts import load_adapter

    bundle = load_adapter(tiny_adapter, None, "bfloat16", merge=False)
    assert bundle.model.get_input_embeddings().weight.dtype == torch.bfloat16
    float32 = load_adapter(tiny_adapter, None, "float32", merge=False)
    assert bundle.meta["base"] == float32.meta["base"]
