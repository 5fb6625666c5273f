"""Import a card or a lorebook: plan every output file, check it, then write them all.

Nothing is written until the whole plan holds: the persona loads as `npcs validate`
would load it (defaults merged, the game's events and stages, the plugins' steps), the
lore folder with the new files loads (ids unique, stages declared, known files listed),
and no output exists unless `force` says to replace it. Each file is then written
atomically (a temporary file renamed over it): lore files first, then the side file,
the persona last, so a persona never names lore that is not there yet.

Outputs of a card: `NPCS/ID.yaml` (the persona, pruned of what `_defaults.yaml` already
says), `NPCS/lore/ID.yaml` (its lorebook and scenario), and `NPCS/ID.card-extra.json`
(the side file). A card exported by persona-agents may name other lore files for its
entries (`world`); those are merged by entry id, and left alone where they already
hold the same entries. Outputs of a lorebook: `NPCS/lore/NAME.yaml` and
`NPCS/lore/NAME.lorebook-extra.json`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoreFileError, PersonaAgentsError, PersonaFileError
from ..fileutil import atomic_write, load_yaml
from ..lore.entries import LORE_SUFFIXES, LoreEntry, lore_folder
from .book import EntryPlan, book_level_notes, entry_fingerprint, ordered, plan_entries
from .errors import CardError, Warnings
from .mapping import map_card
from .source import read_card, read_lorebook
from .text import as_dict
from .yamlout import dump

SIDE_SUFFIX = ".card-extra.json"
LOREBOOK_SIDE_SUFFIX = ".lorebook-extra.json"
RETRIEVE_CHOICES = ("keyword_lore", "faiss_lore", "none")
_SCOPE_KEYS = ("scope", "known_by", "factions")


@dataclass
class Output:
    path: Path
    text: str
    what: str
    exists: bool = False
    unchanged: bool = False  # the file already says this: not written


@dataclass
class ImportPlan:
    source: Path
    outputs: list[Output]
    warnings: Warnings
    notes: list[str] = field(default_factory=list)

    def conflicts(self) -> list[Output]:
        return [o for o in self.outputs if o.exists and not o.unchanged]


def side_file(npcs_dir: Path, npc_id: str) -> Path:
    return Path(npcs_dir) / f"{npc_id}{SIDE_SUFFIX}"


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _existing_lore_file(folder: Path, stem: str) -> Path | None:
    for suffix in LORE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _lore_document(entries: list[dict[str, Any]], header: str) -> str:
    """A lore file's YAML: scope fields all entries share go into `defaults`."""
    common: dict[str, Any] = {}
    for key in _SCOPE_KEYS:
        values = [json.dumps(e.get(key), sort_keys=True) for e in entries]
        if entries and len(set(values)) == 1 and entries[0].get(key) is not None:
            common[key] = entries[0][key]
    body = [{k: v for k, v in e.items() if k not in common} for e in entries]
    document: dict[str, Any] = {"defaults": common} if common else {}
    document["entries"] = body
    return header + dump(document)


def _entry_model(data: dict[str, Any], defaults: dict[str, Any]) -> LoreEntry | None:
    try:
        return LoreEntry.model_validate({**defaults, **data})
    except Exception:
        return None


def _read_lore_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # the validation below reports the file's own problems
        raise CardError([f"{path}: cannot merge the card's entries into it: {exc}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise CardError([f"{path}: cannot merge the card's entries into it: not a lore file with `entries:`"])
    return data


def _plan_lore_file(folder: Path, stem: str, entries: list[dict[str, Any]], header: str, replace: bool,
                    what: str, warnings: Warnings) -> Output:
    """The output for lore file `stem`: new, replaced (`replace`), or merged by id into
    what is there (left alone where it already holds these entries)."""
    existing = _existing_lore_file(folder, stem)
    target = existing if existing is not None and existing.suffix != ".md" else folder / f"{stem}.yaml"
    if existing is None:
        return Output(target, _lore_document(entries, header), what)
    if existing.suffix == ".md":
        raise CardError([f"{existing}: a Markdown lore file has the name '{stem}' the card's entries go to; "
                         "rename it, or import with another --id"])
    if replace:
        return Output(target, _lore_document(entries, header), what, exists=True)
    data = _read_lore_yaml(existing)
    defaults = as_dict(data.get("defaults"))
    raw = [e for e in data.get("entries") or [] if isinstance(e, dict)]
    have = {e.get("id"): _entry_model(e, defaults) for e in raw}
    if all(have.get(e["id"]) is not None and have[e["id"]] == _entry_model(e, {}) for e in entries):
        return Output(target, "", what, exists=True, unchanged=True)
    merged = {e.get("id"): {**defaults, **e} for e in raw}
    for entry in entries:
        merged[entry["id"]] = entry
    warnings.add(str(existing), "entries merged by id; the file is written anew (its comments are not kept)")
    return Output(target, _lore_document(list(merged.values()), header), what + " (merged)", exists=True)


def _prune(full: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`full` without what `defaults` already says (mappings compared key by key, as the
    loader merges them)."""
    out: dict[str, Any] = {}
    for key, value in full.items():
        base = defaults.get(key)
        if key in defaults and value == base:
            continue
        if isinstance(value, dict) and isinstance(base, dict):
            out[key] = _prune(value, base)
            continue
        out[key] = value
    return out


def _ordered_persona(data: dict[str, Any]) -> dict[str, Any]:
    from ..persona import Persona

    order = list(Persona.model_fields)
    return dict(sorted(data.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


# -- validation in a scratch copy of the NPC folder ------------------------------------------
def _check_in_scratch(npcs_dir: Path, outputs: list[Output], persona_path: Path | None, plugins_dir: Path | None,
                      npc_id: str | None) -> None:
    """Load the planned files as the game will: raise CardError with the loaders' own
    `file: field: message` lines (paths shown as the real ones)."""
    from ..lore.entries import load_lore_folder
    from ..lore.scope import check_knowledge
    from ..persona_loader import load_defaults, load_persona_file
    from ..plugins import load_plugins
    from ..runtime import plugins_dir_of

    with tempfile.TemporaryDirectory(prefix="persona-agents-import-") as tmp:
        scratch = Path(tmp) / npcs_dir.name
        (scratch / "lore").mkdir(parents=True)
        for name in ("_defaults.yaml", "_game.yaml"):
            if (npcs_dir / name).is_file():
                shutil.copy(npcs_dir / name, scratch / name)
        real_lore = lore_folder(npcs_dir)
        if real_lore.is_dir():
            for path in real_lore.iterdir():
                if path.is_file() and path.suffix in LORE_SUFFIXES:
                    shutil.copy(path, scratch / "lore" / path.name)
        for output in outputs:
            if not output.unchanged and output.path.suffix in LORE_SUFFIXES:
                relative = output.path.relative_to(npcs_dir)
                (scratch / relative).write_text(output.text, encoding="utf-8")

        def real(message: str) -> str:
            return message.replace(str(scratch), str(npcs_dir))

        try:
            collection = load_lore_folder(scratch / "lore")
            if persona_path is not None:
                persona_text = next(o.text for o in outputs if o.path == persona_path)
                scratch_persona = scratch / persona_path.name
                scratch_persona.write_text(persona_text, encoding="utf-8")
                problems: list[str] = []
                defaults = load_defaults(npcs_dir, problems)
                if problems:
                    raise PersonaFileError(problems)
                host = load_plugins(plugins_dir_of(npcs_dir, plugins_dir))
                loaded = load_persona_file(scratch_persona, host.registry, defaults)
                check_knowledge(loaded.persona.id, loaded.persona.knowledge, collection)
        except (LoreFileError, PersonaFileError) as exc:
            raise CardError([real(p) for p in exc.problems],
                            header="The imported files would not load (nothing was written):") from None
        except PersonaAgentsError as exc:
            raise CardError([real(str(exc))], header="The imported files would not load (nothing was written):") \
                from None
    if persona_path is not None and npc_id is not None:
        _check_id_free(npcs_dir, persona_path, npc_id)


def _check_id_free(npcs_dir: Path, persona_path: Path, npc_id: str) -> None:
    from ..persona_loader import persona_files

    if not npcs_dir.is_dir():
        return
    for path in persona_files(npcs_dir):
        if path == persona_path:
            continue
        try:
            other = load_yaml(path.read_text(encoding="utf-8")) or {}
        except Exception:
            continue
        if isinstance(other, dict) and other.get("id") == npc_id:
            raise CardError([f"{path}: id: '{npc_id}' is already the id of this persona; import the card with "
                             "another --id"])


def _existing_ids(npcs_dir: Path, skip_stem: str) -> set[str]:
    """Lore entry ids already used in the folder (outside lore file `skip_stem`)."""
    ids: set[str] = set()
    folder = lore_folder(npcs_dir)
    if not folder.is_dir():
        return ids
    for path in folder.iterdir():
        if path.suffix not in (".yaml", ".yml") or path.stem == skip_stem:
            continue
        try:
            data = load_yaml(path.read_text(encoding="utf-8")) or {}
        except Exception:
            continue
        for entry in data.get("entries") or [] if isinstance(data, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                ids.add(entry["id"])
    return ids


# -- cards ---------------------------------------------------------------------------------
def plan_card_import(path: Path, npcs_dir: Path, *, npc_id: str | None = None, retrieve: str = "keyword_lore",
                     force: bool = False, plugins_dir: Path | None = None) -> ImportPlan:
    """Every file a card import writes, checked (raises CardError; writes nothing)."""
    from ..persona_loader import load_defaults

    path, npcs_dir = Path(path), Path(npcs_dir)
    card = read_card(path)
    problems: list[str] = []
    defaults = load_defaults(npcs_dir, problems) if npcs_dir.is_dir() else {}
    if problems:
        raise PersonaFileError(problems)
    pipeline_defaults = as_dict(defaults.get("pipeline"))
    full_pipeline = not (pipeline_defaults.get("prompt") and pipeline_defaults.get("generate"))
    guess = npc_id or ""
    if not guess:
        from .mapping import EXTENSION
        from .text import npc_id_from

        own_id = as_dict(as_dict(card.data.get("extensions")).get(EXTENSION)).get("id")
        guess = own_id if isinstance(own_id, str) else npc_id_from(card.data["name"])
    mapped = map_card(card, npc_id=npc_id, retrieve=retrieve, full_pipeline=full_pipeline,
                      taken_ids=_existing_ids(npcs_dir, guess))
    npc_id = mapped.npc_id
    warnings = mapped.warnings
    folder = lore_folder(npcs_dir)
    header = f"# Lore imported by `persona-agents import card` from {path.name}; ranked best first.\n"

    # lore files: the scenario and written entries, grouped by file, best first
    by_file: dict[str, list[EntryPlan]] = {}
    if mapped.scenario is not None:
        by_file.setdefault(npc_id, []).append(mapped.scenario)
    for plan in ordered(mapped.plans):
        by_file.setdefault(plan.file, []).append(plan)
    outputs = []
    for stem, plans in by_file.items():
        entries = [dict(plan.lore or {}) for plan in plans]
        outputs.append(_plan_lore_file(folder, stem, entries, header, replace=stem == npc_id,
                                       what=f"lore, {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}",
                                       warnings=warnings))

    # knowledge: only files that will exist
    persona = dict(mapped.persona)
    knowledge = persona.get("knowledge")
    if isinstance(knowledge, dict) and isinstance(knowledge.get("lore"), list):
        available = set(by_file) | {p.stem for p in folder.iterdir() if p.suffix in LORE_SUFFIXES} \
            if folder.is_dir() else set(by_file)
        missing = [f for f in knowledge["lore"] if f not in available]
        if missing:
            warnings.add(f"{card.prefix}extensions.persona_agents.persona.knowledge.lore",
                         f"{', '.join(missing)}: no entries in the card and no such file in {folder}; left out")
            persona["knowledge"] = {**knowledge, "lore": [f for f in knowledge["lore"] if f not in missing]}

    persona_path = npcs_dir / f"{npc_id}.yaml"
    pruned = _prune(persona, defaults)
    for key in ("id", "name", "role"):
        pruned[key] = persona[key]
    if "pipeline" not in pruned and "pipeline" not in defaults:
        pruned["pipeline"] = persona.get("pipeline", {})
    persona_header = (f"# Imported by `persona-agents import card` from {path.name} ({card.spec or 'V1 card'}); "
                      f"what the card holds beyond the\n# persona is kept in {npc_id}{SIDE_SUFFIX} and restored by "
                      f"`persona-agents export card {npc_id}`.\n")
    side_path = side_file(npcs_dir, npc_id)
    outputs.append(Output(side_path, _json_text(mapped.side), "side file"))
    outputs.append(Output(persona_path, persona_header + dump(_ordered_persona(pruned)), "persona"))
    for output in outputs:
        if not output.unchanged:
            output.exists = output.path.exists()
    result = ImportPlan(path, outputs, warnings)
    _check_conflicts(result, force)
    _check_in_scratch(npcs_dir, outputs, persona_path, plugins_dir, npc_id)
    return result


def _check_conflicts(plan: ImportPlan, force: bool) -> None:
    if force:
        return
    conflicts = plan.conflicts()
    if conflicts:
        raise CardError([f"{o.path}: exists; give --force to replace it ({o.what})" for o in conflicts],
                        header=f"Nothing was written: {len(conflicts)} output file(s) exist:")


# -- lorebooks -----------------------------------------------------------------------------
def plan_lorebook_import(path: Path, npcs_dir: Path, *, scope: str, known_by: tuple[str, ...] = (),
                         factions: tuple[str, ...] = (), name: str | None = None, char: str | None = None,
                         force: bool = False) -> ImportPlan:
    """The lore file and side file of a standalone lorebook, checked (writes nothing)."""
    from .text import slug

    path, npcs_dir = Path(path), Path(npcs_dir)
    book_file = read_lorebook(path)
    book = book_file.book
    warnings = book_file.warnings
    stem = name or slug(str(book.get("name") or "")) or slug(path.stem) or "lorebook"
    if not slug(stem) == stem:
        raise CardError([f"--name {stem!r}: a lore file name is snake_case: a-z, 0-9, _"])
    if scope == "npc" and not known_by:
        raise CardError(["--scope npc: give the NPC ids that know these entries with --known-by ID (repeatable)"])
    if scope == "faction" and not factions:
        raise CardError(["--scope faction: give the factions that know these entries with --faction NAME"])
    if scope == "world" and (known_by or factions):
        raise CardError(["--scope world: every NPC listing the file knows it; --known-by and --faction do not apply"])
    scope_fields: dict[str, Any] = {"scope": scope}
    if scope == "npc":
        scope_fields["known_by"] = list(known_by)
    elif scope == "faction":
        scope_fields["factions"] = list(factions)
    from .book import WORLD_INFO_NAMES

    world_info = book_file.kind == "world_info"
    plans = plan_entries(
        book.get("entries") or [], prefix=book_file.prefix, char=char or book_file.char, file=stem, id_prefix=stem,
        scope=scope_fields, taken_ids=_existing_ids(npcs_dir, stem), warnings=warnings, constant_to_backstory=False,
        labels=book.get("_labels") if world_info else None, names=WORLD_INFO_NAMES if world_info else None,
        originals=book.get("_originals") if world_info else None)
    for plan in plans:  # a lorebook's entries go into the file the user names, with the scope chosen
        if plan.lore is not None:
            plan.file = stem
            plan.lore = {k: v for k, v in plan.lore.items() if k not in _SCOPE_KEYS} | scope_fields
    options = book_level_notes(book, book_file.prefix.rsplit(".entries", 1)[0] or "(top level)", warnings)
    notes = []
    if options:
        setting = ", ".join(f"{k}: {v}" for k, v in options.items())
        notes.append(f"the book's scan depth and token budget are step options here: give keyword_lore "
                     f"{{{setting}}} in the personas that use this file")
    folder = lore_folder(npcs_dir)
    written = ordered(plans)
    if not written:
        raise CardError([f"{path}: {book_file.prefix}: no entry can be written (all are off or empty); "
                         "nothing was written"])
    entries = [dict(plan.lore or {}) for plan in written]
    header = f"# Lore imported by `persona-agents import lorebook` from {path.name}; ranked best first.\n"
    lore_output = _plan_lore_file(folder, stem, entries, header, replace=True,
                                  what=f"lore, {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}",
                                  warnings=warnings)
    side = {
        "about": ("Kept by `persona-agents import lorebook`: what the lorebook holds that lore entries do not."),
        "format": 1,
        "source": {"file": path.name, "kind": book_file.kind},
        "fields": {k: v for k, v in book.items() if k not in ("entries", "_labels", "_originals")},
        "entries": [{"status": p.status, "lore_id": p.lore_id,
                     "fingerprint": entry_fingerprint(p.text, (p.lore or {}).get("keywords", [])),
                     "original": p.original} for p in plans],
    }
    side_output = Output(folder / f"{stem}{LOREBOOK_SIDE_SUFFIX}", _json_text(side), "side file")
    outputs = [lore_output, side_output]
    for output in outputs:
        output.exists = output.path.exists()
    result = ImportPlan(path, outputs, warnings, notes)
    _check_conflicts(result, force)
    _check_in_scratch(npcs_dir, outputs, None, None, None)
    notes.append(f"list '{stem}' in the knowledge.lore of the NPCs that may draw on it")
    return result


# -- writing -------------------------------------------------------------------------------
def write_plan(plan: ImportPlan) -> list[Output]:
    """Write every changed output atomically, lore first and the persona last; returns
    what was written."""
    order = {"side file": 1, "persona": 2}
    written = []
    for output in sorted(plan.outputs, key=lambda o: order.get(o.what, 0)):
        if output.unchanged:
            continue
        output.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(output.path, output.text.encode("utf-8"))
        written.append(output)
    return written
