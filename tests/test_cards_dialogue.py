"""Imported cards talk (issue 31): the hand-written V2 JSON, V2 PNG and V3 cards import
into personas that validate and answer through `persona-agents run-dialogue`, and their
lorebook entries are retrieved by the keyword and the meaning steps for their keys.

The V3 card talks on the real embedded model (one subprocess, the command a writer
runs); the V2 cards on the tiny random model their game's `_defaults.yaml` names
(mechanics: the pipeline, the lore in the turn's meta).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.lore.retrieval import semantic_search
from persona_agents.persona import Knowledge

from .conftest import REPO, cli_env
from .lore_support import runtime_for
from .test_cards import MAREN, TOBIN, png


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def real_game(tmp_path_factory):
    """The V3 card and the V2 card (meaning step) in a game without defaults: the import
    writes the whole pipeline, on the embedded model."""
    npcs = tmp_path_factory.mktemp("cards-real") / "npcs"
    assert invoke("import", "card", MAREN, "--npcs-dir", npcs).exit_code == 0
    assert invoke("import", "card", TOBIN, "--npcs-dir", npcs, "--retrieve", "faiss_lore").exit_code == 0
    result = invoke("npcs", "validate", "--npcs-dir", npcs)
    assert result.exit_code == 0 and "OK: 2 persona file(s) valid" in result.output, result.output
    return npcs


def test_the_v3_card_talks_on_the_real_model_with_its_lorebook(real_game):
    result = subprocess.run(
        [sys.executable, "-m", "persona_agents", "run-dialogue", "--npcs-dir", str(real_game), "--npc", "maren_holt",
         "--say", "Did your husband die in the flood?", "--json", "--seed", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    turn = json.loads(result.stdout.strip().splitlines()[-1])
    assert turn["text"].strip()
    assert turn["meta"]["model"].startswith("embedded")
    assert [entry["id"] for entry in turn["meta"]["lore"]] == ["maren_holt_husband"]  # keyword_lore: its keys


def test_the_meaning_step_finds_each_entry_for_its_keys(real_game, tmp_path):
    runtime = runtime_for(real_game, tmp_path / "cache")
    index = runtime.lore.index(real_game, runtime.embedders.get("embedded"), runtime.cache_dir)
    lore = {npc: yaml.safe_load((real_game / "lore" / f"{npc}.yaml").read_text()) for npc in ("maren_holt", "tobin")}
    for npc, document in lore.items():
        for entry in document["entries"]:
            for key in entry.get("keywords", []):
                hits = semantic_search(index, f"What about the {key}?", npc, Knowledge(lore=[npc]), "not_started", k=2)
                assert entry["id"] in [hit.item.id for hit in hits], (npc, key, [h.item.id for h in hits])


@pytest.fixture
def tiny_game(tmp_path, tiny_model_dir):
    """A game whose defaults put every persona on the tiny model: the V2 card from JSON
    and from PNG imported into it write only their retrieve step."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "_defaults.yaml").write_text(yaml.safe_dump({
        "generation": {"max_new_tokens": 8},
        "pipeline": {"preprocess": ["normalize_input"], "prompt": ["chat_template"],
                     "generate": [{"name": "transformers", "options": {"model": str(tiny_model_dir)}}]}}))
    card_png = tmp_path / "tobin.png"
    card_png.write_bytes(png({"chara": base64.b64encode(TOBIN.read_bytes())}))
    assert invoke("import", "card", TOBIN, "--npcs-dir", npcs).exit_code == 0
    assert invoke("import", "card", card_png, "--npcs-dir", npcs, "--id", "tobin_png").exit_code == 0
    return npcs


def test_the_v2_cards_from_json_and_png_talk_and_retrieve_by_keyword(tiny_game):
    for npc in ("tobin", "tobin_png"):
        assert yaml.safe_load((tiny_game / f"{npc}.yaml").read_text())["pipeline"] == {
            "retrieve": [{"name": "keyword_lore", "options": {"scan_history_turns": 2, "max_lore_tokens": 250}}]}
    assert invoke("npcs", "validate", "--npcs-dir", tiny_game).exit_code == 0
    for npc, line, expected in (("tobin", "Got a room for tonight?", "tobin_rooms"),
                                ("tobin_png", "Is your brother Wim around?", "tobin_png_brother")):
        result = invoke("run-dialogue", "--npcs-dir", tiny_game, "--npc", npc, "--say", line, "--json", "--seed", "1")
        assert result.exit_code == 0, result.output
        turn = json.loads(result.stdout.strip().splitlines()[-1])
        assert [entry["id"] for entry in turn["meta"]["lore"]] == [expected]
        assert turn["state"]["quest_stage"] == "not_started"
