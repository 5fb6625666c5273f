"""Lorebooks to lore entries, and lore entries back to a card's lorebook.

A card's `character_book` (and a standalone V3 lorebook) holds entries with trigger
`keys`; lore files hold entries with `keywords`. Per entry:

- `keys` (and `{{hidden_key: A}}` in the content): `keywords` (keyword_lore fires on
  them; faiss_lore ranks the text by meaning);
- `content`: `text` (macros converted, decorators taken off);
- `enabled: false`, `@@dont_activate`: not written (kept in the side file, exported again);
- `constant: true`, `@@activate`: a card's entry ends the persona's backstory (always in
  the prompt); a standalone lorebook's is an ordinary entry, warned;
- `insertion_order`, `priority`: the entry's place in the file, higher priority (else
  insertion order) first, which keyword_lore's ties and the token budget follow;
- `secondary_keys` with `selective`, `@@additional_keys`: keyword_lore has no second
  condition, so the entry fires on its keys alone; kept in the side file, warned;
- `case_sensitive`, `use_regex`, other decorators: warned, kept in the side file.

The whole entry as it was is kept in the side file, so export gives it back unchanged
where the lore entry was not edited since.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import Warnings
from .text import as_dict, convert_macros, decorator_groups, slug, split_decorators

#: Lore entry fields a card carries in an entry's `extensions.persona_agents` (scope and gates).
LORE_EXTENSION_FIELDS = ("file", "scope", "known_by", "factions", "stages", "min_trust", "min_relationship",
                         "requires_items", "requires_actions", "location", "tags")
_MEANINGFUL = ("activate", "dont_activate", "additional_keys")
_DECORATOR_NOTES = {
    "depth": "lore goes into the prompt's lore section, not at a chosen depth",
    "instruct_depth": "lore goes into the prompt's lore section, not at a chosen depth",
    "reverse_depth": "lore goes into the prompt's lore section, not at a chosen depth",
    "reverse_instruct_depth": "lore goes into the prompt's lore section, not at a chosen depth",
    "position": "lore goes into the prompt's lore section, not at a chosen position",
    "role": "lore is part of the prompt's lore section, not a message with a role",
    "scan_depth": "keyword_lore searches as many earlier exchanges as its `scan_history_turns` option says, "
                  "for every entry alike",
    "instruct_scan_depth": "keyword_lore searches as many earlier exchanges as its `scan_history_turns` option says",
    "activate_only_after": "entries are not counted across turns; gate the entry with `stages` or `min_trust`",
    "activate_only_every": "entries are not counted across turns; gate the entry with `stages` or `min_trust`",
    "keep_activate_after_match": "entries are not counted across turns",
    "dont_activate_after_match": "entries are not counted across turns",
    "exclude_keys": "keyword_lore has no keys that keep an entry out",
    "ignore_on_max_context": "the lore section has its own token budget (`max_lore_tokens`)",
}
_SELECTIVE_LOGIC = {0: "also needs one of", 1: "is left out when all of these appear:",
                    2: "is left out when any of these appears:", 3: "also needs all of"}
_PLAIN_KEY = re.compile(r"^[\w\s'’.-]+$")


@dataclass
class EntryPlan:
    """What becomes of one lorebook entry."""

    index: int
    where: str  # the entry in messages: data.character_book.entries[2]
    original: dict[str, Any]  # the entry as the file has it (kept in the side file)
    status: str  # written | disabled | empty | constant (a card's: folded into the backstory)
    text: str
    lore: dict[str, Any] | None = None  # the lore entry's fields (written entries)
    file: str = ""
    rank: tuple[float, float, int] = (0.0, 0.0, 0)

    @property
    def lore_id(self) -> str | None:
        return None if self.lore is None else self.lore["id"]


def entry_fingerprint(text: str, keywords: Iterable[str]) -> str:
    """What export compares to tell an entry edited since import from one that was not."""
    data = json.dumps([" ".join(text.split()), list(keywords)], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


def _label(entry: dict[str, Any], index: int) -> str:
    for key in ("name", "comment"):
        value = entry.get(key)
        if isinstance(value, str) and slug(value):
            return value
    keys = [k for k in entry.get("keys") or [] if slug(k)]
    return keys[0] if keys else f"entry {index}"


def _unique(base: str, taken: set[str]) -> str:
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item and item.lower() not in (k.lower() for k in seen):
            seen[item] = None
    return list(seen)


def _rank(entry: dict[str, Any], index: int) -> tuple[float, float, int]:
    order = entry.get("insertion_order")
    order = float(order) if isinstance(order, (int, float)) and not isinstance(order, bool) else 0.0
    priority = entry.get("priority")
    first = float(priority) if isinstance(priority, (int, float)) and not isinstance(priority, bool) else order
    return (-first, -order, index)


def plan_entries(
    entries: list[dict[str, Any]],
    *,
    prefix: str,
    char: str,
    file: str,
    id_prefix: str,
    scope: dict[str, Any],
    taken_ids: set[str],
    warnings: Warnings,
    constant_to_backstory: bool,
    labels: list[str] | None = None,
    names: dict[str, str] | None = None,
    originals: list[dict[str, Any]] | None = None,
) -> list[EntryPlan]:
    """The plan of every entry, in book order (written ones carry their lore fields).

    `scope`: the scope fields of entries that do not carry their own (in
    `extensions.persona_agents`); `names`: field names as the file spells them
    (SillyTavern's world info says `key` for `keys`); `labels`: how each entry is named
    in messages (default `{prefix}[i]`)."""
    names = names or {}
    plans = []
    planned: set[str] = set()  # ids given in this book
    for index, entry in enumerate(entries):
        where = labels[index] if labels else f"{prefix}[{index}]"

        def at(name: str) -> str:
            return f"{where}.{names.get(name, name)}"

        extensions = as_dict(entry.get("extensions"))
        own = as_dict(extensions.get("persona_agents"))
        decorators, body = split_decorators(entry.get("content") or "")
        enabled = entry.get("enabled", True) is not False
        constant = entry.get("constant") is True
        activate = dont_activate = False
        additional: list[str] = []
        for group in decorator_groups(decorators):
            chosen = next((d for d in group if d.name in _MEANINGFUL), None)
            if chosen is not group[0]:
                note = _DECORATOR_NOTES.get(group[0].name, "a decorator this importer does not know")
                then = f"its fallback `{chosen.line.strip()}` applies" if chosen else "kept in the side file"
                warnings.add(at("content"), f"decorator `{group[0].line.strip()}` has no meaning here ({note}); {then}")
            if chosen is None:
                continue
            if chosen.name == "activate":
                activate = True
            elif chosen.name == "dont_activate":
                dont_activate = True
            else:
                additional += [k.strip() for k in chosen.value.split(",") if k.strip()]
        if activate:
            constant = True
        elif dont_activate and enabled:
            enabled = False
            warnings.add(at("content"), "decorator `@@dont_activate`: the entry never activates; not written to "
                         "lore (kept in the side file)")
            dont_activate = False
        converted = convert_macros(body, at("content"), char, warnings, lore=True)
        keys = [k.strip() for k in entry.get("keys") or [] if k.strip()]
        if entry.get("use_regex") is True:
            plain = [k for k in keys if _PLAIN_KEY.match(k)]
            dropped = [k for k in keys if k not in plain]
            if dropped:
                warnings.add(at("keys"), "use_regex: keyword_lore matches words, not regular expressions: "
                             f"dropped {', '.join(dropped)}" + (f"; kept {', '.join(plain)}" if plain else ""))
            keys = plain
        keywords = _dedupe([*keys, *converted.hidden_keys])
        if entry.get("case_sensitive") is True:
            warnings.add(at("case_sensitive"), "true: keyword_lore matches keywords in any case")
        secondary = [k for k in entry.get("secondary_keys") or [] if k.strip()] if entry.get("selective") else []
        logic = extensions.get("selectiveLogic", 0)
        if secondary:
            warnings.add(at("secondary_keys"),
                         f"selective: the entry {_SELECTIVE_LOGIC.get(logic, 'also needs one of')} "
                         f"{', '.join(secondary)}; keyword_lore has no second condition, so it fires on its keys "
                         "alone (kept in the side file)")
        if additional:
            warnings.add(at("content"), f"decorator `@@additional_keys`: the entry also needs one of "
                         f"{', '.join(additional)}; keyword_lore has no second condition, so it fires on its keys "
                         "alone (kept in the side file)")
        _world_info_notes(extensions, at, warnings)
        plan = EntryPlan(index, where, originals[index] if originals else entry, "written", converted.text,
                         rank=_rank(entry, index))
        if not enabled:
            plan.status = "disabled"
            if entry.get("enabled", True) is False:
                said = "true" if names.get("enabled") == "disable" else "false"
                warnings.add(at("enabled"), f"{said}: the entry is off; not written to lore (kept in the side file)")
        elif not converted.text:
            plan.status = "empty"
            warnings.add(at("content"), "empty: nothing to add to the prompt; not written to lore")
        elif constant and constant_to_backstory:
            plan.status = "constant"
            warnings.add(at("constant"), "always in the prompt: added to the persona's backstory")
        plans.append(plan)
        if plan.status != "written":
            continue
        if constant:
            warnings.add(at("constant"), "lore is retrieved per turn here: the entry is retrieved by its keys and "
                         "meaning like the others; to keep it in an NPC's prompt always, put it in the persona's "
                         "backstory")
        if not keywords:
            warnings.add(at("keys"), "none: keyword_lore never retrieves the entry (faiss_lore can, by meaning)")
        own_id = own.get("id")
        if isinstance(own_id, str):  # the id a persona-agents export gave it: the same entry, wherever it is
            entry_id = _unique(own_id, planned)
        else:
            entry_id = _unique(f"{id_prefix}_{slug(_label(entry, index))}", taken_ids | planned)
        planned.add(entry_id)
        lore: dict[str, Any] = {"id": entry_id, "text": converted.text}
        if own.get("scope"):
            lore.update({k: own[k] for k in LORE_EXTENSION_FIELDS if k in own and k != "file"})
        else:
            lore.update(scope)
        if keywords:
            lore["keywords"] = keywords
        plan.lore = lore
        plan.file = own["file"] if isinstance(own.get("file"), str) and own.get("scope") else file
    return plans


def _world_info_notes(extensions: dict[str, Any], at, warnings: Warnings) -> None:
    """SillyTavern world-info behaviour with no counterpart here (kept in the side file)."""
    probability = extensions.get("probability")
    if extensions.get("useProbability", True) and isinstance(probability, (int, float)) and probability < 100:
        warnings.add(at("probability"), f"{probability}: fires only that often in SillyTavern; here it fires "
                     "whenever its keys match")
    for name in ("sticky", "cooldown", "delay"):
        if extensions.get(name):
            warnings.add(at(name), f"{extensions[name]}: timed effects have no counterpart here; "
                         "gate the entry with `stages` or `min_trust` instead")
    if extensions.get("position") == 4:
        warnings.add(at("position"), "at depth: lore goes into the prompt's lore section, not at a chosen depth")


def ordered(plans: list[EntryPlan]) -> list[EntryPlan]:
    """Written entries in ranking order: priority (else insertion order), then book order."""
    return sorted((p for p in plans if p.status == "written"), key=lambda p: p.rank)


def book_level_notes(book: dict[str, Any], where: str, warnings: Warnings) -> dict[str, int]:
    """Book-level settings: `scan_depth` and `token_budget` become keyword_lore options
    (returned), `recursive_scanning` has no counterpart (warned)."""
    options: dict[str, int] = {}
    depth = book.get("scan_depth")
    if isinstance(depth, (int, float)) and not isinstance(depth, bool) and depth >= 1:
        # scan_depth counts messages, the player's line first; an exchange is two.
        options["scan_history_turns"] = min(50, int(depth) // 2)
    budget = book.get("token_budget")
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget >= 1:
        options["max_lore_tokens"] = min(8192, int(budget))
    if book.get("recursive_scanning") is True:
        warnings.add(f"{where}.recursive_scanning", "true: entries are not triggered by other entries' text here")
    return options


# -- SillyTavern world info ------------------------------------------------------------
_WORLD_INFO_FIELDS = {"key", "keysecondary", "content", "comment", "constant", "selective", "order", "disable",
                      "uid", "caseSensitive"}


def world_info_to_book(parsed: dict[str, Any], warnings: Warnings) -> dict[str, Any]:
    """A SillyTavern world-info file as a character book (entries keep the rest of
    their fields in `extensions`), with `_labels` and `_originals` for messages and the
    side file."""
    entries, labels, originals = [], [], []
    for key, raw in parsed.get("entries", {}).items():
        if not isinstance(raw, dict):
            continue
        entry = {
            "keys": list(raw.get("key") or []),
            "secondary_keys": list(raw.get("keysecondary") or []),
            "content": raw.get("content") or "",
            "comment": raw.get("comment") or "",
            "constant": raw.get("constant") is True,
            "selective": raw.get("selective", True) is not False,
            "insertion_order": raw.get("order", 100),
            "enabled": raw.get("disable") is not True,
            "extensions": {k: v for k, v in raw.items() if k not in _WORLD_INFO_FIELDS},
        }
        if raw.get("caseSensitive") is not None:
            entry["case_sensitive"] = raw.get("caseSensitive") is True
        entries.append(entry)
        labels.append(f"entries.{key}")
        originals.append(raw)
    book = {k: v for k, v in parsed.items() if k != "entries"}
    book.update({"entries": entries, "_labels": labels, "_originals": originals})
    return book


WORLD_INFO_NAMES = {"keys": "key", "secondary_keys": "keysecondary", "enabled": "disable",
                    "case_sensitive": "caseSensitive", "insertion_order": "order"}


# -- lore back to a lorebook -------------------------------------------------------------
def entry_from_lore(entry: Any, file: str, index: int, insertion_order: int) -> dict[str, Any]:
    """A V2 lorebook entry for a lore entry (a `LoreEntry`), its scope and gates in
    `extensions.persona_agents` so our importer restores them."""
    own: dict[str, Any] = {"id": entry.id, "file": file, "scope": entry.scope}
    for name in LORE_EXTENSION_FIELDS[2:]:
        value = getattr(entry, name)
        if value not in (None, []):
            own[name] = value
    return {
        "keys": list(entry.keywords),
        "content": entry.text,
        "extensions": {"persona_agents": own},
        "enabled": True,
        "insertion_order": insertion_order,
        "case_sensitive": False,
        "name": entry.id,
        "priority": insertion_order,
        "id": index,
        "comment": entry.id,
        "selective": False,
        "secondary_keys": [],
        "constant": False,
        "position": "before_char",
    }
