"""Character cards and lorebooks in and out (issue 31): `persona-agents import card`,
`import lorebook` and `export card`, on cards written by hand for these tests
(tests/cards/: a V2 card with a lorebook, a V3 card with decorators and macros, a V3
lorebook, a SillyTavern world-info file; the V2 PNG is built here, byte by byte).

No model runs here: test_cards_dialogue.py talks to imported cards, and
test_cards_roundtrip.py exports and imports the sample NPCs.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from persona_agents.cli import main
from persona_agents.lore.entries import load_lore_folder
from persona_agents.lore.retrieval import keyword_search
from persona_agents.persona import Knowledge

from .conftest import NPCS_DIR, REPO

CARDS = REPO / "tests" / "cards"
TOBIN = CARDS / "tobin_v2.json"
MAREN = CARDS / "maren_v3.json"


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def import_card(card: Path, npcs: Path, *extra: str):
    return cli("import", "card", card, "--npcs-dir", npcs, *extra)


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def png(chunks: dict[str, bytes], *, end: bool = True) -> bytes:
    """A 1x1 grey PNG with these tEXt chunks, built by hand (not with the code under test)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(b"\x00\x80"))
    for key, text in chunks.items():
        data += chunk(b"tEXt", key.encode("latin-1") + b"\0" + text)
    return data + (chunk(b"IEND", b"") if end else b"")


def b64(path_or_data) -> bytes:
    raw = path_or_data.read_bytes() if isinstance(path_or_data, Path) else json.dumps(path_or_data).encode()
    return base64.b64encode(raw)


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def body(path: Path) -> str:
    """A written file without its first comment lines (which name the source file)."""
    return "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))


# -- V2 ------------------------------------------------------------------------------------
def test_v2_card_becomes_a_persona_a_lore_file_and_a_side_file(tmp_path):
    npcs = tmp_path / "npcs"
    result = import_card(TOBIN, npcs)
    assert result.exit_code == 0, result.output
    for name in ("lore/tobin.yaml (lore, 4 entries)", "tobin.card-extra.json (side file)", "tobin.yaml (persona)"):
        assert f"Wrote {npcs / name}" in result.output
    persona = load(npcs / "tobin.yaml")
    assert persona["id"] == "tobin" and persona["name"] == "Tobin"
    assert persona["role"] == "the innkeeper of the Drowned Lantern, a riverside inn in Ashford."
    assert persona["backstory"].startswith("He bought the inn with his brother's river money")
    assert persona["backstory"].endswith("He never forgets a debt.")  # a personality sentence that is not a trait
    assert persona["traits"] == ["jovial", "nosy", "shrewd"]
    assert persona["speaking_style"] == "He talks fast and loud, and laughs at his own jokes."
    assert persona["example_lines"] == [
        {"player": "Hello.", "npc": "*Tobin wipes the bar and grins.* Evening! Mind the step, it bites."},
        {"player": "Got a room for the night?", "npc": "A room, a bed and a bolt on the door. Three silver, "
                                                       "breakfast extra."},
        {"player": "Heard any news?", "npc": "News? Friend, I AM the news. The barges are late again."},
        {"player": "Why?", "npc": "Ask the smugglers, not me. Your ale is getting warm."},
    ]
    assert persona["knowledge"] == {"lore": ["tobin"]}
    assert persona["pipeline"]["retrieve"] == [{"name": "keyword_lore",
                                                "options": {"scan_history_turns": 2, "max_lore_tokens": 250}}]

    lore = load(npcs / "lore" / "tobin.yaml")
    assert lore["defaults"] == {"scope": "npc", "known_by": ["tobin"]}
    # the scenario first, then by priority (insertion order where there is none): 50, 30, 10
    assert [e["id"] for e in lore["entries"]] == ["tobin_scenario", "tobin_brother", "tobin_ale", "tobin_rooms"]
    by_id = {e["id"]: e for e in lore["entries"]}
    assert by_id["tobin_scenario"]["text"].startswith("The player walks into the common room")
    assert by_id["tobin_brother"] == {
        "id": "tobin_brother", "keywords": ["brother", "Wim"],
        "text": "Tobin's brother Wim runs boats at night and pays Tobin in river coin to store crates in the cellar."}
    assert by_id["tobin_rooms"]["keywords"] == ["room", "bed", "rooms"]

    side = json.loads((npcs / "tobin.card-extra.json").read_text())
    assert side["root"] == {"name": "Tobin", "description": json.loads(TOBIN.read_text())["description"],
                            "personality": "Jovial, nosy, shrewd", "scenario": "",
                            "first_mes": "Evening, {{user}}! Mind the step.", "mes_example": "",
                            "avatar": "none", "chat": "Tobin - 2024-05-01@12h00m00s",
                            "create_date": "2024-05-01@12h00m00s"}
    assert side["data"]["alternate_greetings"] == ["*Tobin looks up from the cask.* Back so soon, {{user}}?"]
    assert side["extensions"] == {"talkativeness": "0.8", "fav": False, "world": "Ashford"}
    assert [e["status"] for e in side["book"]["entries"]] == ["written"] * 3
    assert side["book"]["entries"][1]["original"]["secondary_keys"] == ["cellar", "crates", "smuggle"]

    warnings = result.stderr
    assert f"warning: {TOBIN}: data.character_book.entries[1].secondary_keys: selective: the entry also needs " \
           "one of cellar, crates, smuggle; keyword_lore has no second condition" in warnings
    assert f"warning: {TOBIN}: data.post_history_instructions: no counterpart" in warnings
    assert f"warning: {TOBIN}: data.alternate_greetings: no counterpart" in warnings
    assert f"warning: {TOBIN}: data.scenario: written as lore entry tobin_scenario without keywords" in warnings

    validated = cli("npcs", "validate", "--npcs-dir", npcs)
    assert validated.exit_code == 0, validated.output

    # the keyword step retrieves each entry for each of its keys
    collection = load_lore_folder(npcs / "lore")
    knowledge = Knowledge(lore=["tobin"])
    for entry in lore["entries"]:
        for key in entry.get("keywords", []):
            hits = keyword_search(collection, f"Tell me about the {key}.", [], "tobin", knowledge, "not_started", 10)
            assert entry["id"] in [hit.item.id for hit in hits], (entry["id"], key)


def test_a_v2_png_imports_like_its_json(tmp_path):
    card_png = tmp_path / "tobin.png"
    card_png.write_bytes(png({"Software": b"hand-made", "chara": b64(TOBIN)}))
    assert import_card(TOBIN, tmp_path / "from_json").exit_code == 0
    result = import_card(card_png, tmp_path / "from_png")
    assert result.exit_code == 0, result.output
    for name in ("tobin.yaml", "lore/tobin.yaml"):
        assert body(tmp_path / "from_png" / name) == body(tmp_path / "from_json" / name)
    side = json.loads((tmp_path / "from_png" / "tobin.card-extra.json").read_text())
    assert side["source"] == {"file": "tobin.png", "container": "png", "spec": "chara_card_v2", "spec_version": "2.0"}


def test_a_png_with_both_chunks_is_read_from_ccv3(tmp_path):
    card_png = tmp_path / "both.png"
    card_png.write_bytes(png({"chara": b64(TOBIN), "ccv3": b64(MAREN)}))
    result = import_card(card_png, tmp_path / "npcs")
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "npcs" / "maren_holt.yaml")["name"] == "Maren Holt"


def test_compressed_and_international_text_chunks_are_read_too(tmp_path):
    from persona_agents.cards.png import read_text_chunks

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    base = png({})
    ztxt = chunk(b"zTXt", b"chara\0\0" + zlib.compress(b64(TOBIN)))
    itxt = chunk(b"iTXt", b"ccv3\0\1\0en\0\0" + zlib.compress(b64(MAREN)))
    data = base[:-12] + ztxt + itxt + base[-12:]
    texts = read_text_chunks(data, "card.png")
    assert base64.b64decode(texts["chara"]) == TOBIN.read_bytes()
    assert base64.b64decode(texts["ccv3"]) == MAREN.read_bytes()


# -- V3 ------------------------------------------------------------------------------------
def test_v3_card_with_decorators_macros_and_constant_entries(tmp_path):
    npcs = tmp_path / "npcs"
    result = import_card(MAREN, npcs, "--id", "maren")
    assert result.exit_code == 0, result.output
    persona = load(npcs / "maren.yaml")
    assert persona["name"] == "Maren Holt"
    assert persona["role"] == "the ferrywoman of the Greywater crossing."
    # constant entries (`constant: true`, `@@activate`) are always known: they end the backstory
    assert persona["backstory"].split("\n\n")[-2:] == [
        "Maren never takes a fare from a child.",
        "The crossing costs two coppers; the lord's toll-keeper takes one of them."]
    assert persona["traits"] == ["weathered", "wry", "protective"]
    assert persona["speaking_style"] == "She speaks slowly, in a low voice, and calls everyone 'dear'."
    assert persona["example_lines"] == [
        {"player": "Hello.", "npc": "*Maren looks up from coiling rope.* Evening. Crossing costs two coppers, dear."},
        {"player": "Is the river safe tonight?", "npc": "Safe as a sleeping dog. Don't wake it."},
        {"player": "Who are you?", "npc": "Maren, dear. I take folk across. Two coppers a head."},
    ]
    lore = load(npcs / "lore" / "maren.yaml")
    entries = {e["id"]: e for e in lore["entries"]}
    # off (enabled: false, @@dont_activate as the fallback of an unknown decorator) and empty entries are not
    # written; constant ones went into the backstory
    assert list(entries) == ["maren_scenario", "maren_husband", "maren_eels", "maren_sandbank"]
    assert entries["maren_husband"]["keywords"] == ["flood", "husband", "drowned"]  # {{hidden_key: drowned}}
    assert entries["maren_husband"]["text"] == "Maren's husband Tomas drowned in the spring flood five years ago."
    assert entries["maren_sandbank"]["text"].startswith("A long sandbank")  # decorators taken off
    assert entries["maren_eels"]["keywords"] == ["fish"]  # use_regex: the regular expression is dropped
    assert entries["maren_scenario"]["text"] == ("The player arrives at the ferry landing at dusk, wanting to cross "
                                                 "before the curfew bell.")
    retrieve = persona["pipeline"]["retrieve"][0]
    assert retrieve == {"name": "keyword_lore", "options": {"scan_history_turns": 2, "max_lore_tokens": 300}}

    book = "data.character_book"
    expected = [
        "data.mes_example: macro {{random:Two coppers,Three coppers}} picks at random in a card app; a persona's "
        "text is fixed, so it became its first choice 'Two coppers'",
        f"{book}.entries[0].content: decorator `@@depth 4` has no meaning here",
        f"{book}.entries[0].content: decorator `@@role system` has no meaning here",
        f"{book}.entries[1].secondary_keys: selective: the entry also needs one of spring, Tomas",
        f"{book}.entries[2].constant: always in the prompt: added to the persona's backstory",
        f"{book}.entries[3].enabled: false: the entry is off; not written to lore (kept in the side file)",
        f"{book}.entries[4].content: decorator `@@activate_only_after 2` has no meaning here (entries are not "
        "counted across turns; gate the entry with `stages` or `min_trust`); its fallback `@@@dont_activate` applies",
        f"{book}.entries[4].content: decorator `@@dont_activate`: the entry never activates",
        f"{book}.entries[5].constant: always in the prompt",
        f"{book}.entries[6].content: decorator `@@exclude_keys cooked` has no meaning here",
        f"{book}.entries[6].keys: use_regex: keyword_lore matches words, not regular expressions: dropped eel(s)?; "
        "kept fish",
        f"{book}.entries[6].case_sensitive: true: keyword_lore matches keywords in any case",
        f"{book}.entries[6].content: decorator `@@additional_keys`: the entry also needs one of river, net",
        f"{book}.entries[7].content: empty: nothing to add to the prompt; not written to lore",
        f"{book}.recursive_scanning: true: entries are not triggered by other entries' text here",
        "data.system_prompt: no counterpart",
        "data.group_only_greetings: no counterpart",
        "data.extensions.depth_prompt: a character's note put into the chat at a depth has no counterpart here",
    ]
    for line in expected:
        assert f"warning: {MAREN}: {line}" in result.stderr, line
    side = json.loads((npcs / "maren.card-extra.json").read_text())
    assert [e["status"] for e in side["book"]["entries"]] == [
        "written", "written", "constant", "disabled", "disabled", "constant", "written", "empty"]
    assert side["data"]["assets"] == [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]
    assert cli("npcs", "validate", "--npcs-dir", npcs).exit_code == 0


def test_a_v1_card_without_spec_is_read_with_a_warning(tmp_path):
    card = tmp_path / "old.json"
    card.write_text(json.dumps({"name": "Old Joe", "description": "Old Joe is a rope seller at the docks. He is "
                                "missing two fingers.", "personality": "grumpy",
                                "first_mes": "What?", "mes_example": "", "scenario": ""}))
    result = import_card(card, tmp_path / "npcs")
    assert result.exit_code == 0, result.output
    assert f"warning: {card}: spec: missing: read as a V1 card" in result.stderr
    persona = load(tmp_path / "npcs" / "old_joe.yaml")
    assert persona["role"] == "a rope seller at the docks." and persona["traits"] == ["grumpy"]
    assert persona["backstory"] == "He is missing two fingers."


# -- errors: the file and the field, and nothing written --------------------------------------
def _card(data: dict) -> bytes:
    return json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": data}).encode()


BROKEN = {
    "no_name.json": (_card({"description": "Nobody.", "personality": ""}),
                     "{path}: data.name: the card has no name; every persona needs one"),
    "blank_name.json": (_card({"name": "   "}), "{path}: data.name: the card has no name"),
    "invalid.json": (b'{"spec": "chara_card_v2", "data": {"name": "X",}}',
                     "{path}: invalid JSON: line 1, column 48: Expecting property name enclosed in double quotes"),
    "not_an_object.json": (b"[1, 2]", "{path}: expected a JSON object (a character card), got a list"),
    "keys_string.json": (_card({"name": "X", "character_book": {"entries": [{"keys": "sword", "content": "y"}]}}),
                         "{path}: data.character_book.entries[0].keys: expected a list of strings, got a string"),
    "tags_wrong.json": (_card({"name": "X", "tags": "a,b"}), "{path}: data.tags: expected a list of strings"),
    "a_lorebook.json": (json.dumps({"spec": "lorebook_v3", "data": {"entries": []}}).encode(),
                        "{path}: spec: 'lorebook_v3' is a lorebook, not a character card; import it with "
                        "`persona-agents import lorebook"),
    "unknown_spec.json": (json.dumps({"spec": "chara_card_v9", "data": {"name": "X"}}).encode(),
                          "{path}: spec: 'chara_card_v9' is not a character card spec; expected one of "
                          "chara_card_v2, chara_card_v3"),
    "not_png.png": (b"GIF89a....", "{path}: not a PNG file (its first bytes are not the PNG signature)"),
    "no_chunk.png": (png({"Software": b"paint"}), "{path}: the PNG holds no character card: no `ccv3` (V3) or "
                     "`chara` (V2) text chunk (text chunks found: Software)"),
    "bad_crc.png": (png({"chara": b64(TOBIN)})[:-20] + b"XXXX" + png({"chara": b64(TOBIN)})[-16:],
                    "fails its CRC check (the file is corrupted)"),
    "truncated.png": (png({"chara": b64(TOBIN)})[:200], "the file ends first (a truncated file?)"),
    "no_iend.png": (png({"chara": b64(TOBIN)}, end=False), "{path}: broken PNG: no IEND chunk (the file is cut off)"),
    "bad_base64.png": (png({"chara": b"%%%not base64%%%"}), "{path}: PNG chunk `chara`: not base64-encoded UTF-8 JSON"),
    "bad_json.png": (png({"chara": base64.b64encode(b"{nope")}), "{path}: PNG chunk `chara`: invalid JSON: line 1"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_card_is_a_clear_error_and_writes_nothing(tmp_path, name):
    data, message = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(data)
    npcs = tmp_path / "npcs"
    result = import_card(path, npcs)
    assert result.exit_code == 1
    assert message.format(path=path) in result.output
    assert "Traceback" not in result.output
    assert files_in(npcs) == []


def test_existing_outputs_are_kept_without_force(tmp_path):
    npcs = tmp_path / "npcs"
    assert import_card(TOBIN, npcs).exit_code == 0
    (npcs / "tobin.yaml").write_text((npcs / "tobin.yaml").read_text() + "# my edit\n")
    before = {name: (npcs / name).read_bytes() for name in files_in(npcs)}
    again = import_card(TOBIN, npcs)
    assert again.exit_code == 1
    assert "Nothing was written: 3 output file(s) exist:" in again.output
    for name in ("lore/tobin.yaml", "tobin.card-extra.json", "tobin.yaml"):
        assert f"{npcs / name}: exists; give --force to replace it" in again.output
    assert {name: (npcs / name).read_bytes() for name in files_in(npcs)} == before
    forced = import_card(TOBIN, npcs, "--force")
    assert forced.exit_code == 0, forced.output
    assert f"Replaced {npcs / 'tobin.yaml'} (persona)" in forced.output
    assert "# my edit" not in (npcs / "tobin.yaml").read_text()
    assert files_in(npcs) == sorted(before)  # atomic writes leave no temporary files


def test_a_persona_that_would_not_load_is_not_written(tmp_path):
    """The plan is loaded as the game will load it before any file is written: here the
    game declares other quest stages, so the card's persona (not_started) does not fit."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "_game.yaml").write_text(yaml.safe_dump({
        "events": {"rent_room": {"description": "the innkeeper lets the player a room"}},
        "quest_stages": ["arrived", "settled"]}))
    result = import_card(TOBIN, npcs)
    assert result.exit_code == 1
    assert "The imported files would not load (nothing was written):" in result.output
    assert f"{npcs / 'tobin.yaml'}: initial_state.quest_stage: unknown quest stage 'not_started'" in result.output
    assert files_in(npcs) == ["_game.yaml"]


def test_dry_run_and_id_option(tmp_path):
    npcs = tmp_path / "npcs"
    result = import_card(TOBIN, npcs, "--dry-run", "--id", "innkeeper_tobin")
    assert result.exit_code == 0, result.output
    assert f"would write: {npcs / 'innkeeper_tobin.yaml'} (persona)" in result.output
    assert files_in(npcs) == []
    bad = import_card(TOBIN, npcs, "--id", "Tobin Two")
    assert bad.exit_code == 2 and "--id" in bad.output and "snake_case" in bad.output


def test_importing_into_a_folder_with_defaults_writes_only_what_differs(tmp_path):
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "_defaults.yaml").write_text((NPCS_DIR / "_defaults.yaml").read_text())
    result = import_card(TOBIN, npcs, "--retrieve", "faiss_lore")
    assert result.exit_code == 0, result.output
    persona = load(npcs / "tobin.yaml")
    assert persona["pipeline"] == {"retrieve": [{"name": "faiss_lore", "options": {"max_lore_tokens": 250}}]}
    assert "scenario: written as lore entry" not in result.output


# -- round trips -----------------------------------------------------------------------------
def _without_our_extension(card: dict) -> dict:
    card = json.loads(json.dumps(card))
    card["data"]["extensions"].pop("persona_agents")
    return card


def test_a_v2_card_comes_back_unchanged(tmp_path):
    npcs = tmp_path / "npcs"
    assert import_card(TOBIN, npcs).exit_code == 0
    out = tmp_path / "tobin.card.json"
    result = cli("export", "card", "tobin", "--npcs-dir", npcs, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out} (Character Card V2 of tobin, 3 lorebook entries)" in result.output
    exported = json.loads(out.read_text())
    assert _without_our_extension(exported) == json.loads(TOBIN.read_text())
    assert exported["data"]["extensions"]["persona_agents"]["id"] == "tobin"
    # and the exported card imports into the same persona
    assert import_card(out, tmp_path / "again").exit_code == 0
    for name in ("tobin.yaml", "lore/tobin.yaml"):
        assert body(tmp_path / "again" / name) == body(npcs / name)


def test_a_v3_card_goes_out_as_v2_with_everything_kept(tmp_path):
    npcs = tmp_path / "npcs"
    assert import_card(MAREN, npcs).exit_code == 0
    out = tmp_path / "maren.json"
    result = cli("export", "card", "maren_holt", "--npcs-dir", npcs, "--out", out)
    assert result.exit_code == 0, result.output
    assert "warning: spec: the card came as V3 and goes out as V2; its V3 fields are kept in data" in result.output
    exported = json.loads(out.read_text())
    original = json.loads(MAREN.read_text())
    assert exported["spec"] == "chara_card_v2" and exported["spec_version"] == "2.0"
    data = _without_our_extension(exported)["data"]
    assert data == original["data"]  # every field, the lorebook's decorators, off and empty entries included
    assert import_card(out, tmp_path / "again").exit_code == 0
    assert body(tmp_path / "again" / "maren_holt.yaml") == body(npcs / "maren_holt.yaml")


def test_export_after_editing_writes_the_persona_and_the_lore(tmp_path):
    npcs = tmp_path / "npcs"
    assert import_card(TOBIN, npcs).exit_code == 0
    persona = load(npcs / "tobin.yaml")
    persona["traits"] = ["jovial", "nosy", "shrewd", "generous, when drunk"]
    (npcs / "tobin.yaml").write_text(yaml.safe_dump(persona, sort_keys=False))
    lore = load(npcs / "lore" / "tobin.yaml")
    lore["entries"][2]["text"] = "The house ale is brewed upriver by the Mossfoot sisters."
    lore["entries"].append({"id": "tobin_dice", "text": "Tobin runs a dice game in the back room.",
                            "keywords": ["dice", "game"], "stages": ["in_progress"]})
    (npcs / "lore" / "tobin.yaml").write_text(yaml.safe_dump(lore, sort_keys=False))
    out = tmp_path / "edited.json"
    result = cli("export", "card", "tobin", "--npcs-dir", npcs, "--out", out)
    assert result.exit_code == 0, result.output
    assert "changed since the import: name, description, personality, first_mes and mes_example are written " \
           "from the persona" in result.output
    assert "warning: lore entry tobin_ale: edited since the import" in result.output
    data = json.loads(out.read_text())["data"]
    assert data["personality"] == ("Traits: jovial; nosy; shrewd; generous, when drunk\n"
                                   "Speaking style: He talks fast and loud, and laughs at his own jokes.")
    assert data["description"].startswith("Tobin, the innkeeper of the Drowned Lantern")
    assert data["first_mes"] == "*Tobin wipes the bar and grins.* Evening! Mind the step, it bites."
    assert data["mes_example"].startswith("<START>\n{{user}}: Got a room for the night?\n{{char}}: A room, a bed")
    entries = data["character_book"]["entries"]
    original = json.loads(TOBIN.read_text())["data"]["character_book"]["entries"]
    assert entries[0] == original[0] and entries[1] == original[1]  # untouched: as the card had them
    assert entries[2] == {**original[2], "content": "The house ale is brewed upriver by the Mossfoot sisters."}
    assert entries[3]["content"] == "Tobin runs a dice game in the back room."
    assert entries[3]["extensions"]["persona_agents"] == {"id": "tobin_dice", "file": "tobin", "scope": "npc",
                                                          "known_by": ["tobin"], "stages": ["in_progress"]}
    assert "1 entry is known only at some quest stages or trust (tobin_dice)" in result.output
    # the edited card imports with the new trait split right
    assert import_card(out, tmp_path / "again").exit_code == 0
    assert load(tmp_path / "again" / "tobin.yaml")["traits"] == persona["traits"]


def test_export_to_png_and_back(tmp_path):
    out = tmp_path / "brann.png"
    result = cli("export", "card", "blacksmith_village_center", "--npcs-dir", NPCS_DIR, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # embedded into a picture that already carries another card: its ccv3 chunk goes, ours is read
    picture = tmp_path / "picture.png"
    picture.write_bytes(png({"ccv3": b64(MAREN), "Title": b"a forge"}))
    again = tmp_path / "brann2.png"
    result = cli("export", "card", "blacksmith_village_center", "--npcs-dir", NPCS_DIR, "--out", again,
                 "--image", picture)
    assert result.exit_code == 0, result.output
    assert b"a forge" in again.read_bytes() and b"ccv3" not in again.read_bytes()
    for card in (out, again):
        game = tmp_path / card.stem / "npcs"
        imported = import_card(card, game)
        assert imported.exit_code == 0, imported.output
        assert load(game / "blacksmith_village_center.yaml")["name"] == "Brann"
    exists = cli("export", "card", "blacksmith_village_center", "--npcs-dir", NPCS_DIR, "--out", out)
    assert exists.exit_code == 1 and f"{out}: exists; give --force to replace it" in exists.output


def test_export_of_an_unknown_npc_names_the_ones_there(tmp_path):
    result = cli("export", "card", "nobody", "--npcs-dir", NPCS_DIR, "--out", tmp_path / "x.json")
    assert result.exit_code == 1
    assert "Unknown NPC 'nobody'" in result.output and "blacksmith_village_center" in result.output
    assert not (tmp_path / "x.json").exists()


# -- standalone lorebooks ----------------------------------------------------------------------
def test_a_v3_lorebook_becomes_a_lore_file_with_the_scope_chosen(tmp_path):
    npcs = tmp_path / "npcs"
    book = CARDS / "greywater_lorebook_v3.json"
    result = cli("import", "lorebook", book, "--scope", "faction", "--faction", "river_folk", "--npcs-dir", npcs)
    assert result.exit_code == 0, result.output
    lore = load(npcs / "lore" / "greywater_river.yaml")
    assert lore["defaults"] == {"scope": "faction", "factions": ["river_folk"]}
    assert [e["id"] for e in lore["entries"]] == ["greywater_river_the_ferry", "greywater_river_the_river",
                                                  "greywater_river_fog"]
    assert lore["entries"][0]["text"] == "The only crossing for ten miles is Maren's ferry below Ashford."
    assert f"warning: {book}: data.entries[1].content: decorator `@@position after_desc` has no meaning here" \
           in result.output
    assert f"warning: {book}: data.entries[2].constant: lore is retrieved per turn here" in result.output
    assert f"warning: {book}: data.entries[3].enabled: false: the entry is off" in result.output
    assert "give keyword_lore {scan_history_turns: 1, max_lore_tokens: 400} in the personas" in result.output
    assert "list 'greywater_river' in the knowledge.lore of the NPCs" in result.output
    side = json.loads((npcs / "lore" / "greywater_river.lorebook-extra.json").read_text())
    assert side["entries"][3]["status"] == "disabled" and side["entries"][3]["original"]["comment"] == "Bridge"
    assert load_lore_folder(npcs / "lore").by_id["greywater_river_fog"].entry.factions == ["river_folk"]


def test_a_sillytavern_world_info_file_imports_with_its_own_field_names(tmp_path):
    npcs = tmp_path / "npcs"
    book = CARDS / "ashford_world_info.json"
    result = cli("import", "lorebook", book, "--scope", "world", "--name", "streets", "--npcs-dir", npcs)
    assert result.exit_code == 0, result.output
    lore = load(npcs / "lore" / "streets.yaml")
    assert lore["defaults"] == {"scope": "world"}
    assert [(e["id"], e["keywords"]) for e in lore["entries"]] == [("streets_watch", ["watch", "guards"]),
                                                                   ("streets_market", ["market", "square"])]
    for line in ("entries.1.keysecondary: selective: the entry is left out when any of these appears: bribe, coin",
                 "entries.1.caseSensitive: true", "entries.1.probability: 50: fires only that often in SillyTavern",
                 "entries.1.sticky: 2: timed effects have no counterpart here",
                 "entries.1.position: at depth", "entries.2.disable: true: the entry is off"):
        assert f"warning: {book}: {line}" in result.output, line
    side = json.loads((npcs / "lore" / "streets.lorebook-extra.json").read_text())
    assert side["entries"][1]["original"] == json.loads(book.read_text())["entries"]["1"]
    again = cli("import", "lorebook", book, "--scope", "world", "--name", "streets", "--npcs-dir", npcs)
    assert again.exit_code == 1 and "exists; give --force to replace it" in again.output


def test_a_cards_lorebook_imports_as_a_lorebook(tmp_path):
    npcs = tmp_path / "npcs"
    result = cli("import", "lorebook", TOBIN, "--scope", "npc", "--known-by", "tobin", "--npcs-dir", npcs)
    assert result.exit_code == 0, result.output
    assert f"warning: {TOBIN}: spec: chara_card_v2: a character card; its lorebook (data.character_book) is " \
           "imported" in result.output
    lore = load(npcs / "lore" / "the_drowned_lantern.yaml")
    assert [e["id"] for e in lore["entries"]] == ["the_drowned_lantern_brother", "the_drowned_lantern_ale",
                                                  "the_drowned_lantern_rooms"]
    assert lore["entries"][0]["text"].startswith("Tobin's brother Wim")  # {{char}}: the card's name
    book = {"spec": "lorebook_v3", "data": {"entries": [
        {"keys": ["smile"], "content": "{{char}} smiles at {{user}}.", "extensions": {}, "enabled": True,
         "insertion_order": 1, "use_regex": False}]}}
    world = tmp_path / "book.json"
    world.write_text(json.dumps(book))
    result = cli("import", "lorebook", world, "--scope", "world", "--npcs-dir", npcs)
    assert result.exit_code == 0, result.output
    assert "data.entries[0].content: macro {{char}} names the card's character, and there is none here: it " \
           "became 'the character' (give --char NAME)" in result.output
    assert load(npcs / "lore" / "book.yaml")["entries"][0]["text"] == "The character smiles at the player."
    result = cli("import", "lorebook", world, "--scope", "world", "--npcs-dir", npcs, "--char", "Brann", "--force")
    assert load(npcs / "lore" / "book.yaml")["entries"][0]["text"] == "Brann smiles at the player."


@pytest.mark.parametrize("args, message", [
    (("--scope", "npc"), "--scope npc: give the NPC ids that know these entries with --known-by ID"),
    (("--scope", "faction"), "--scope faction: give the factions that know these entries with --faction NAME"),
    (("--scope", "world", "--known-by", "x"), "--scope world: every NPC listing the file knows it"),
    (("--scope", "world", "--name", "Bad Name"), "--name 'Bad Name': a lore file name is snake_case"),
])
def test_lorebook_scope_options_are_checked(tmp_path, args, message):
    result = cli("import", "lorebook", CARDS / "greywater_lorebook_v3.json", *args, "--npcs-dir", tmp_path / "npcs")
    assert result.exit_code == 1 and message in result.output
    assert files_in(tmp_path / "npcs") == []


def test_a_lorebook_that_clashes_with_existing_ids_writes_nothing(tmp_path):
    npcs = tmp_path / "npcs"
    book = {"spec": "lorebook_v3", "data": {"entries": [
        {"keys": ["a"], "content": "One.", "extensions": {"persona_agents": {"id": "world_ashford", "scope": "world"}},
         "enabled": True, "insertion_order": 1, "use_regex": False}]}}
    (npcs / "lore").mkdir(parents=True)
    (npcs / "lore" / "world.yaml").write_text((NPCS_DIR / "lore" / "world.yaml").read_text())
    path = tmp_path / "clash.json"
    path.write_text(json.dumps(book))
    result = cli("import", "lorebook", path, "--scope", "world", "--npcs-dir", npcs)
    assert result.exit_code == 1
    assert "The imported files would not load (nothing was written):" in result.output
    assert f"{npcs / 'lore' / 'world.yaml'}: entry 'world_ashford': the id is already used in " \
           f"{npcs / 'lore' / 'clash.yaml'}; ids must be unique" in result.output
    assert files_in(npcs) == ["lore/world.yaml"]


# -- macros ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, speech, expected", [
    ("Hello, {{user}}!", True, "Hello!"),
    ("{{user}}, come closer.", True, "Come closer."),
    ("I told {{user}} twice. Is that {{user}}'s coin?", True, "I told you twice. Is that your coin?"),
    ("{{user}} meets {{char}}. {{char}} likes {{user}}'s hat.", False,
     "The player meets Brann. Brann likes the player's hat."),
    ("<USER> greets <BOT>.", False, "The player greets Brann."),
    ("Price: {{pick::3,4}} silver{{// secret}}.", False, "Price: 3 silver."),
    ("Roll {{roll:d6}} now.", False, "Roll now."),
])
def test_macros_are_converted_where_they_mean_something(text, speech, expected):
    from persona_agents.cards.errors import Warnings
    from persona_agents.cards.text import convert_macros

    warnings = Warnings()
    assert convert_macros(text, "data.x", "Brann", warnings, speech=speech).text == expected
    if "roll" in text:
        assert warnings == ["data.x: macro {{roll:d6}} has no meaning here; removed"]


def test_import_and_export_are_commands():
    assert {"card", "lorebook"} <= set(main.commands["import"].commands)  # type: ignore[attr-defined]
    assert "card" in main.commands["export"].commands  # type: ignore[attr-defined]
