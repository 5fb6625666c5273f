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
    later = invoke("lore", "search", "--npc", "mother_abandoned_factory", "--stage", "in_progress", question, cache=cache)
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
    assert turn["meta"]["steps"]["retrieve"] == ["faiss_lore"]
    assert "Building the lore index" in result.stderr
    assert list((cache / "lore-index").glob("*/*/manifest.json"))
