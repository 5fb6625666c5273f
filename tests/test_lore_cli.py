"""`persona-agents index-lore`, `lore search`, and lore reaching a real dialogue turn."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.models import CACHE_ENV, cache_dir, embedded_checkpoint

from .conftest import NPCS_DIR, REPO, cli_env
from .lore_support import sample_runtime


def invoke(*args, cache):
    return CliRunner().invoke(main, list(args), env={CACHE_ENV: str(cache)})


def test_index_lore_builds_then_only_updates(sample_npcs_copy, tmp_path):
    cache = tmp_path / "cache"
    first = invoke("index-lore", "--npcs-dir", str(sample_npcs_copy), cache=cache)
    assert first.exit_code == 0, first.output
    count = int(re.search(r": (\d+) entries \((\d+) embedded, 0 reused, 0 removed; new index\)", first.stdout).group(1))
    assert count >= 40 and str(cache / "lore-index") in first.stdout

    path = sample_npcs_copy / "lore" / "world.yaml"
    data = yaml.safe_load(path.read_text())
    data["entries"][0]["text"] += " Its bridge is old."
    path.write_text(yaml.safe_dump(data))
    second = invoke("index-lore", "--npcs-dir", str(sample_npcs_copy), cache=cache)
    assert f": {count} entries (1 embedded, {count - 1} reused, 0 removed)" in second.stdout


def test_index_lore_reports_every_problem_without_a_traceback(sample_npcs_copy, tmp_path):
    path = sample_npcs_copy / "lore" / "pip.yaml"
    data = yaml.safe_load(path.read_text())
    data["entries"][0]["scope"] = "everyone"
    data["entries"][1]["stage"] = ["in_progress"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("index-lore", "--npcs-dir", str(sample_npcs_copy), cache=tmp_path / "cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    first, second = data["entries"][0]["id"], data["entries"][1]["id"]
    assert f"{path}: entries[0] ({first}): scope: Input should be 'world', 'faction' or 'npc'" in result.output
    assert f"{path}: entries[1] ({second}): stage: unknown field 'stage'" in result.output


def test_lore_search_shows_what_an_npc_would_retrieve():
    cache = sample_runtime().cache_dir  # the sample index is already built there
    question = "Where is your brother's hideout?"
    later = invoke("lore", "search", "--npc", "mother_abandoned_factory", "--stage", "in_progress", question,
                   cache=cache)
    assert later.exit_code == 0, later.output
    first_line, hit = later.stdout.splitlines()[:2]
    assert "Silvia (mother_abandoned_factory) at stage 'in_progress'" in first_line and "k=3" in first_line
    assert re.match(r"^\s*0\.\d{3}  silvia_brother_hideout  \[npc: mother_abandoned_factory \| "
                    r"stages: in_progress, complete\]  silvia\.yaml$", hit)
    assert "keeps a hideout in the cellar under the old mill" in later.stdout

    before = invoke("lore", "search", "--npc", "mother_abandoned_factory", "--k", "10", "--show-hidden",
                    question, cache=cache)
    shown, hidden = before.stdout.split("Hidden from this NPC at this stage")
    assert "at stage 'not_started'" in shown and "silvia_brother_hideout" not in shown
    assert "silvia_brother_hideout" in hidden and "known only at stage(s) in_progress, complete" in hidden
    assert "dorian_jason_hideout" in hidden and "file 'dorian' is not in the NPC's knowledge.lore" in hidden

    keywords = invoke("lore", "search", "--npc", "mother_abandoned_factory", "--keywords", "my brother", cache=cache)
    assert "family_siblings" in keywords.stdout and "(keywords: brother)" in keywords.stdout


def test_lore_search_says_why_a_gated_secret_is_withheld():
    cache = sample_runtime().cache_dir
    question = "Is Jason alive?"
    stranger = invoke("lore", "search", "--npc", "uncle_hideout", "--show-hidden", question, cache=cache)
    assert stranger.exit_code == 0, stranger.output
    shown, hidden = stranger.stdout.split("Hidden from this NPC at this stage")
    assert "at stage 'not_started', trust 0.15, relationship -0.10" in shown.splitlines()[0]  # his initial state
    assert "dorian_jason_alive" not in shown
    assert re.search(r"dorian_jason_alive  \[npc: uncle_hideout \| trust >= 0\.50\]  dorian\.yaml  "
                     r"\(trust 0\.15 < 0\.50\)", hidden)
    hidden, withheld = hidden.split("Withheld from this NPC until the game allows it (stage or gates):")
    assert "dorian_jason_alive  [npc: uncle_hideout | trust >= 0.50]  (trust 0.15 < 0.50)" in withheld
    assert ("dorian_jason_hideout  [npc: uncle_hideout | stages: in_progress, complete | trust >= 0.50]  "
            "(known only at stage(s) in_progress, complete; the quest stage is not_started; "
            "trust 0.15 < 0.50)") in withheld
    assert "silvia_" not in withheld and "pip_" not in withheld, "only entries this NPC could know are listed"

    trusted = invoke("lore", "search", "--npc", "uncle_hideout", "--trust", "0.6", "--stage", "in_progress", question,
                     cache=cache)
    assert "trust 0.60" in trusted.stdout.splitlines()[0]
    assert re.search(r"^\s*0\.\d{3}  dorian_jason_alive  \[npc: uncle_hideout \| trust >= 0\.50\]",
                     trusted.stdout, re.M)
    assert "Withheld" not in trusted.stdout

    friend = invoke("lore", "search", "--npc", "merchant_traveling", "--relationship", "0.2", "--keywords",
                    "what does the map show, the way to the hermit's hut?", cache=cache)
    assert "pip_map_details  [npc: merchant_traveling | relationship >= +0.50]  (relationship +0.20 < +0.50)" in (
        friend.stdout)


def test_lore_search_items_and_actions(sample_npcs_copy, tmp_path):
    path = sample_npcs_copy / "lore" / "hale.yaml"
    data = yaml.safe_load(path.read_text())
    data["entries"].append({"id": "hale_archive_key", "text": "The archive key hangs in the gatehouse.",
                            "scope": "npc", "known_by": ["guard_city_gate"], "requires_items": ["city_pass"],
                            "requires_actions": ["met_the_clerk"], "keywords": ["archive"]})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["lore", "search", "--npc", "guard_city_gate", "--keywords", "--npcs-dir", str(sample_npcs_copy)]
    without = invoke(*args, "--item", "city_pass", "Where is the archive?", cache=tmp_path / "cache")
    assert without.exit_code == 0, without.output
    assert "items: city_pass" in without.stdout.splitlines()[0]
    assert ("hale_archive_key  [npc: guard_city_gate | items: city_pass | actions: met_the_clerk]  "
            "(player has not done met_the_clerk)") in without.stdout
    both = invoke(*args, "--item", "city_pass", "--action", "met_the_clerk", "Where is the archive?",
                  cache=tmp_path / "cache")
    assert "(keywords: archive)" in both.stdout and "Withheld" not in both.stdout


def test_index_lore_rejects_a_stage_the_game_does_not_declare(sample_npcs_copy, tmp_path):
    path = sample_npcs_copy / "lore" / "silvia.yaml"
    data = yaml.safe_load(path.read_text())
    index = next(i for i, e in enumerate(data["entries"]) if e["id"] == "silvia_brother_hideout")
    data["entries"][index]["stages"] = ["in_progress", "completed"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("index-lore", "--npcs-dir", str(sample_npcs_copy), cache=tmp_path / "cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{path}: entries[{index}] (silvia_brother_hideout): stages: 'completed' is not a declared quest stage; "
            "declared quest stages") in result.output
    assert f"{sample_npcs_copy / '_game.yaml'}): not_started, in_progress, complete" in result.output


def test_lore_search_unknown_npc_is_a_message():
    result = invoke("lore", "search", "--npc", "nobody", "hello", cache=sample_runtime().cache_dir)
    assert result.exit_code == 1 and "Unknown NPC 'nobody'" in result.output and "Traceback" not in result.output


@pytest.mark.model
def test_run_dialogue_puts_silvias_hideout_lore_into_the_turn(tmp_path):
    """Through the real command: the index is built on first use in a fresh cache, and
    the entry Silvia knows at `in_progress` is retrieved for the question (meta.lore)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    # Reuse the converted embedded model rather than converting it again in the new cache.
    (cache / "models").symlink_to(embedded_checkpoint().parent, target_is_directory=True)
    assert cache_dir() != cache
    args = ["run-dialogue", "--npc", "mother_abandoned_factory", "--npcs-dir", str(NPCS_DIR),
            "--quest-stage", "in_progress", "--say", "Where is your brother's hideout?", "--json", "--seed", "1"]
    result = subprocess.run([sys.executable, "-m", "persona_agents", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=cli_env(**{CACHE_ENV: str(cache)}))
    assert result.returncode == 0, result.stderr
    turn = json.loads(result.stdout.strip().splitlines()[-1])
    assert "silvia_brother_hideout" in [entry["id"] for entry in turn["meta"]["lore"]]
    assert all(set(entry) == {"id", "score"} for entry in turn["meta"]["lore"])
    assert turn["meta"]["steps"]["retrieve"] == ["faiss_lore", "recall_memories"]
    assert "Building the lore index" in result.stderr
    assert list((cache / "lore-index").glob("*/*/manifest.json"))
