"""Export a persona and the lore it may know as a Character Card V2.

- `name`: `name`;
- `role`, `backstory`: `description`, "NAME, ROLE", a blank line, the backstory;
- `traits`, `speaking_style`: `personality`, a `Traits:` line and a `Speaking style:` line;
- `example_lines`: the first is `first_mes` (its player's line goes in the extension), the
  rest `mes_example`, a `<START>` block each;
- the lore entry `ID_scenario`: `scenario`;
- the lore entries it may know (its `knowledge.lore` files, as their scope allows):
  `character_book.entries`, keywords as `keys`, file, scope and gates in each entry's
  `extensions.persona_agents`;
- everything else (`flag_rules`, `lines`, `pipeline`, ...): `extensions.persona_agents.persona`.

A persona imported from a card has a side file (`ID.card-extra.json`): what the card
held beyond the persona comes back from it (other fields, extensions, alternate
greetings, entries that were off, each entry's own settings), and while the persona's
mapped fields and a lore entry's text and keywords are as the import left them, the
card's own wording comes back too (its macros, its `{{user}}:` lines, its decorators).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UnknownNpcError
from ..fileutil import load_yaml
from ..lore.entries import LoreItem, load_lore_folder, lore_folder
from .book import entry_fingerprint, entry_from_lore
from .errors import CardError, Warnings
from .importer import side_file
from .mapping import CARD_PERSONA_FIELDS, EXTENSION, FIRST_MES_PLAYER, persona_fingerprint
from .source import V1_FIELDS
from .text import as_dict, one_line, paragraphs, split_decorators

V2_REQUIRED: dict[str, Any] = {
    "name": "", "description": "", "personality": "", "scenario": "", "first_mes": "", "mes_example": "",
    "creator_notes": "", "system_prompt": "", "post_history_instructions": "", "alternate_greetings": [],
    "tags": [], "creator": "", "character_version": "", "extensions": {},
}


def _find_persona(npcs_dir: Path, npc_id: str) -> Path:
    from ..persona_loader import persona_files

    ids = []
    for path in persona_files(npcs_dir) if npcs_dir.is_dir() else []:
        try:
            data = load_yaml(path.read_text(encoding="utf-8")) or {}
        except Exception:
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            if data["id"] == npc_id:
                return path
            ids.append(data["id"])
    raise UnknownNpcError(npc_id, sorted(ids), str(npcs_dir))


def _read_side(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CardError([f"{path}: cannot read the side file: {exc}; fix it or delete it (the card is then "
                         "written from the persona alone)"]) from None
    if not isinstance(data, dict):
        raise CardError([f"{path}: the side file is not a JSON object; fix it or delete it"])
    return data


def knowable(items: tuple[LoreItem, ...], npc_id: str, knowledge: Any) -> list[LoreItem]:
    """Entries the NPC may ever know (file listed, scope allows), whatever the stage and gates."""
    out = []
    for item in items:
        entry = item.entry
        if item.source not in knowledge.lore:
            continue
        if entry.scope == "npc" and npc_id not in entry.known_by:
            continue
        if entry.scope == "faction" and not set(entry.factions) & set(knowledge.factions):
            continue
        out.append(item)
    return out


def _personality(traits: list[str], style: str) -> str:
    lines = []
    if traits:
        lines.append("Traits: " + ("; " if any("," in t for t in traits) else ", ").join(traits))
    if style:
        lines.append("Speaking style: " + one_line(style))
    return "\n".join(lines)


def _mes_example(pairs: list[tuple[str, str]]) -> str:
    return "\n".join(f"<START>\n{{{{user}}}}: {player}\n{{{{char}}}}: {npc}" for player, npc in pairs)


def _retrieve_options(persona: Any) -> dict[str, int]:
    """A card book's scan depth and token budget from the persona's retrieve step."""
    for spec in persona.pipeline.retrieve:
        options = spec.options or {}
        book: dict[str, int] = {}
        if spec.name == "keyword_lore":
            book["scan_depth"] = 1 + 2 * int(options.get("scan_history_turns", 2))
        if spec.name in ("keyword_lore", "faiss_lore"):
            book["token_budget"] = int(options.get("max_lore_tokens", 200))
        return book
    return {}


def export_card(npc_id: str, npcs_dir: Path, plugins_dir: Path | None = None) -> tuple[dict[str, Any], Warnings]:
    """The V2 card of an NPC (and the warnings: what other card apps will not use)."""
    from ..persona_loader import deep_merge, load_defaults, load_persona_file
    from ..plugins import load_plugins
    from ..runtime import plugins_dir_of

    npcs_dir = Path(npcs_dir)
    path = _find_persona(npcs_dir, npc_id)
    problems: list[str] = []
    defaults = load_defaults(npcs_dir, problems)
    if problems:
        from ..errors import PersonaFileError

        raise PersonaFileError(problems)
    host = load_plugins(plugins_dir_of(npcs_dir, plugins_dir))
    persona = load_persona_file(path, host.registry, defaults).persona
    merged_raw = deep_merge(defaults, load_yaml(path.read_text(encoding="utf-8")) or {})
    folder = lore_folder(npcs_dir)
    items = knowable(load_lore_folder(folder).items, persona.id, persona.knowledge) if folder.is_dir() else []
    by_id = {item.id: item for item in items}
    side_path = side_file(npcs_dir, npc_id)
    side = _read_side(side_path) or {}
    warnings = Warnings()
    mapped = as_dict(side.get("mapped"))
    book_side = side.get("book") if isinstance(side.get("book"), dict) else None
    side_entries = [e for e in (book_side or {}).get("entries") or [] if isinstance(e, dict)]

    # description, personality, first_mes, mes_example
    examples = [(line.player, line.npc) for line in persona.example_lines]
    fingerprint = persona_fingerprint(persona.name, persona.role, persona.backstory, list(persona.traits),
                                      persona.speaking_style, examples)
    fields: dict[str, Any] = {}
    first_player = FIRST_MES_PLAYER
    restored = bool(mapped) and mapped.get("fingerprint") == fingerprint
    if restored:
        fields = {k: v for k, v in (mapped.get("fields") or {}).items() if k in V1_FIELDS}
        first_player = mapped.get("first_mes_player") or FIRST_MES_PLAYER
    else:
        if mapped:
            warnings.add(str(path), "changed since the import: name, description, personality, first_mes and "
                         "mes_example are written from the persona (the card's own wording is not restored)")
        folded = {one_line(e.get("backstory_text", "")) for e in side_entries if e.get("status") == "constant"}
        backstory = [p for p in paragraphs(persona.backstory) if one_line(p) not in folded]
        fields["name"] = persona.name
        fields["description"] = "\n\n".join([f"{persona.name}, {persona.role.strip()}", *backstory])
        fields["personality"] = _personality(list(persona.traits), persona.speaking_style)
        with_first = mapped.get("first_mes", True) if mapped else True
        if examples and with_first:
            first_player, fields["first_mes"] = examples[0]
            examples = examples[1:]
        else:
            fields["first_mes"] = ""
        fields["mes_example"] = _mes_example(examples)

    # scenario: the NPC's scenario lore entry
    scenario_side = as_dict(mapped.get("scenario_entry"))
    scenario_id = scenario_side.get("id") or f"{npc_id}_scenario"
    scenario_item = by_id.get(scenario_id)
    if scenario_item is not None:
        same = entry_fingerprint(scenario_item.text, scenario_item.entry.keywords) == scenario_side.get("fingerprint")
        original = (mapped.get("fields") or {}).get("scenario")
        fields["scenario"] = original if same and isinstance(original, str) else scenario_item.text
    elif scenario_side:
        warnings.add(f"lore entry {scenario_id}", "deleted since the import: the card's scenario is left empty")
        fields["scenario"] = ""

    # character_book
    entries: list[dict[str, Any]] = []
    used = {scenario_id}
    for record in side_entries:
        original = as_dict(record.get("original"))
        if record.get("status") != "written":
            entries.append(original)
            continue
        item = by_id.get(record.get("lore_id") or "")
        if item is None:
            warnings.add(f"lore entry {record.get('lore_id')}", "deleted since the import (or no longer known to "
                         "this NPC): left out of the card")
            continue
        used.add(item.id)
        if entry_fingerprint(item.text, item.entry.keywords) == record.get("fingerprint"):
            entries.append(original)
            continue
        decorators, _ = split_decorators(original.get("content") or "")
        prefix = "".join(d.line + "\n" for d in decorators)
        entries.append({**original, "keys": list(item.entry.keywords), "content": prefix + item.text})
        warnings.add(f"lore entry {item.id}", "edited since the import: its content and keys are written from the "
                     "lore entry (the card's own wording is not restored)")
    fresh = [item for item in items if item.id not in used]
    orders = [e["insertion_order"] for e in entries if isinstance(e.get("insertion_order"), (int, float))]
    start = int(min(orders)) - 1 if orders else len(fresh)
    for i, item in enumerate(fresh):
        entries.append(entry_from_lore(item.entry, item.source, len(entries), start - i))
    gated = [item.id for item in fresh if item.entry.stages or item.entry.gated]
    if gated:
        warnings.add("character_book", f"{len(gated)} entr{'y is' if len(gated) == 1 else 'ies are'} known only "
                     f"at some quest stages or trust ({', '.join(gated[:4])}{', ...' if len(gated) > 4 else ''}); "
                     "other card apps ignore that (kept in each entry's extensions.persona_agents)")

    data: dict[str, Any] = dict(fields)
    kept = as_dict(side.get("data"))
    data.update(kept)
    if entries or book_side is not None:
        book_fields = dict(book_side.get("fields") or {}) if book_side else {
            "name": f"{persona.name}'s lore", **_retrieve_options(persona), "extensions": {}}
        data["character_book"] = {**book_fields, "entries": entries}
    extensions = dict(as_dict(side.get("extensions")))
    own = dict(as_dict(side.get("own_extension")))
    own.update({
        "version": 1,
        "id": persona.id,
        "first_mes_player": first_player,
        "persona": {k: v for k, v in merged_raw.items() if k not in CARD_PERSONA_FIELDS},
    })
    extensions[EXTENSION] = own
    data["extensions"] = extensions
    source = as_dict(side.get("source"))
    if source.get("spec") != "chara_card_v2" or not restored:
        for key, value in V2_REQUIRED.items():
            data.setdefault(key, value)
        if not side and not data.get("creator_notes"):
            data["creator_notes"] = (f"Exported by persona-agents from {npc_id}. Its game rules, authored lines "
                                     "and pipeline travel in extensions.persona_agents.")
    if source.get("spec") == "chara_card_v3":
        warnings.add("spec", "the card came as V3 and goes out as V2; its V3 fields are kept in data")
    root = dict(as_dict(side.get("root")))
    if not restored:  # mirrors for V1 readers follow the persona's new wording
        for key in V1_FIELDS:
            if key in root:
                root[key] = data.get(key, "")
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    card.update({k: v for k, v in root.items() if k not in card})
    return card, warnings
