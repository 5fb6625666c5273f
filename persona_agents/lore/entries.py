"""Lore entries: the schema, and loading the YAML and Markdown files of `npcs/lore/`.

A lore file holds many entries; its name without the suffix (its *stem*) is what a
persona lists in `knowledge.lore`. Two formats, read the same way:

YAML (`world.yaml`)::

    defaults: {scope: npc, known_by: [uncle_hideout]}   # optional, merged under every entry
    entries:
      - id: dorian_jason_hideout
        text: Jason hides in a sealed stretch of the old tunnels ...
        stages: [in_progress, complete]   # quest stages of the game (`_game.yaml`)
        min_trust: 0.5                    # gates, as in a persona's flag_rules:
        # min_relationship: 0.5           #   all must hold for the entry to be known
        # requires_items: [jasons_id_card]
        # requires_actions: [solved_riddle]

Markdown (`dorian.md`): optional front matter (`---` lines at the very top) holds the
defaults; each `## entry_id` heading starts an entry; an optional fenced ```yaml block
right under the heading holds its metadata; the paragraphs after it are its text.
Anything before the first `##` heading (a `#` title, notes for writers) is ignored.

Entry text is whitespace-normalised (line breaks and indentation do not matter), so
reflowing a paragraph never forces it to be embedded again.

An entry's `stages` must be quest stages the game declares: those of `_game.yaml` beside
the personas (the lore folder's parent), or the default three without one. An entry
with `stages` or gates (`min_trust`, `min_relationship`, `requires_items`,
`requires_actions`) is withheld before ranking until the turn meets all of them
(`scope.py`), like a flag whose rule does not hold; keep an entry's gates equal to the
persona's rule for the event that reveals it (an entry on Jason being alive gates like
Dorian's `npc_main_story`).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import LoreFileError
from ..fileutil import load_yaml
from ..game import game_file, load_game

LORE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".md")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class LoreEntry(BaseModel):
    """One piece of knowledge, as a writer authors it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique across all lore files: letters, digits, `_`, `.`, `-`.")
    text: str = Field(min_length=1, description="What the NPC knows, as it goes into the prompt.")
    scope: Literal["world", "faction", "npc"] = Field(
        description="world: every NPC that lists the file; faction: NPCs of `factions`; npc: the NPCs in `known_by`."
    )
    known_by: list[str] = Field(default_factory=list, description="NPC ids that know an npc-scoped entry.")
    factions: list[str] = Field(default_factory=list, description="Factions that know a faction-scoped entry.")
    stages: list[str] | None = Field(
        None, description="Quest stages at which the entry is known (declared by the game); absent means always."
    )
    min_trust: float | None = Field(
        None, ge=0.0, le=1.0, description="Known only while the NPC's trust in the player is at least this (0..1)."
    )
    min_relationship: float | None = Field(
        None, ge=-1.0, le=1.0, description="Known only while the relationship is at least this (-1..1)."
    )
    requires_items: list[str] = Field(
        default_factory=list, description="Known only while the player holds all these items (the game's `items`)."
    )
    requires_actions: list[str] = Field(
        default_factory=list,
        description="Known only once the player has done all these actions (the game's `actions`).",
    )
    location: str | None = Field(None, description="Where the entry is about (informational).")
    tags: list[str] = Field(default_factory=list, description="Free tags (informational).")
    keywords: list[str] = Field(
        default_factory=list, description="Words or phrases that trigger the entry in the keyword_lore step."
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"'{value}' is not a valid id: use letters, digits, '_', '.' and '-' (no spaces)")
        return value

    @field_validator("text")
    @classmethod
    def _normalise_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("text is empty")
        return value

    @field_validator("requires_items", "requires_actions")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        if any(not name.strip() for name in names):
            raise ValueError("names must not be empty")
        return names

    @field_validator("stages")
    @classmethod
    def _declared_stages(cls, stages: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """Stages the game does not declare would hide the entry for ever (a typo keeps a
        secret from its own NPC): checked when the loader passes the game's stages."""
        game = (info.context or {}).get("quest_stages")
        if stages and game is not None:
            unknown = [s for s in stages if s not in game.stages]
            if unknown:
                what = "is not a declared quest stage" if len(unknown) == 1 else "are not declared quest stages"
                declared = ", ".join(game.stages)
                raise ValueError(f"{', '.join(map(repr, unknown))} {what}; "
                                 f"declared quest stages{game.where}: {declared}")
        return stages

    @property
    def gated(self) -> bool:
        """Whether the turn's state (not only scope and stage) decides if the entry is known."""
        return (self.min_trust is not None or self.min_relationship is not None
                or bool(self.requires_items) or bool(self.requires_actions))

    @model_validator(mode="after")
    def _scope_fields(self) -> "LoreEntry":
        if self.scope == "npc":
            if not self.known_by:
                raise ValueError("scope 'npc' needs `known_by`: the NPC ids that know this entry")
            if self.factions:
                raise ValueError("scope 'npc' does not use `factions`; use scope 'faction' for faction knowledge")
        elif self.scope == "faction":
            if not self.factions:
                raise ValueError("scope 'faction' needs `factions`: the factions that know this entry")
            if self.known_by:
                raise ValueError("scope 'faction' does not use `known_by`; use scope 'npc' for named NPCs")
        elif self.known_by or self.factions:
            raise ValueError("scope 'world' is known to every NPC that lists the file; remove `known_by`/`factions`")
        if self.stages is not None and not self.stages:
            raise ValueError("`stages: []` would hide the entry at every stage; remove the key to mean 'always'")
        return self


_FIELDS = ", ".join(LoreEntry.model_fields)


@dataclass(frozen=True)
class QuestStages:
    """The game's quest stages, which entries' `stages` are checked against."""

    stages: tuple[str, ...]
    source: Path | None = None  # the `_game.yaml` that declares them; None: the default stages

    @property
    def where(self) -> str:
        return f" (in {self.source})" if self.source else ""


def game_stages(npcs_dir: str | Path) -> QuestStages:
    """The quest stages of the game beside the personas in `npcs_dir` (its `_game.yaml`,
    or the default three); a broken game file raises its own `file: field: message` error."""
    path = game_file(npcs_dir)
    return QuestStages(tuple(load_game(npcs_dir).quest_stages), path if path.is_file() else None)


def _as_stages(stages: "QuestStages | Sequence[str] | None", folder: Path) -> QuestStages:
    if stages is None:
        return game_stages(folder.parent)
    if isinstance(stages, QuestStages):
        return stages
    return QuestStages(tuple(stages))


@dataclass(frozen=True)
class LoreItem:
    """An entry with the file it came from (the file's stem decides who may list it)."""

    entry: LoreEntry
    source: str
    path: Path

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def text(self) -> str:
        return self.entry.text

    @cached_property
    def content_hash(self) -> str:
        """Hash of what is embedded: a changed hash means the vector must be recomputed."""
        return hashlib.sha256(self.entry.text.encode("utf-8")).hexdigest()


Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class LoreCollection:
    """All entries of one lore folder, in file order, with the folder's signature."""

    folder: Path
    items: tuple[LoreItem, ...]
    signature: Signature = ()
    by_id: dict[str, LoreItem] = field(init=False, repr=False, compare=False)
    #: Entries with a trust, relationship, item or action gate (what searches key their cache on).
    gated: tuple[LoreItem, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {item.id: item for item in self.items})
        object.__setattr__(self, "gated", tuple(item for item in self.items if item.entry.gated))

    @property
    def sources(self) -> list[str]:
        """The file names (without suffix) personas may list in `knowledge.lore`."""
        return sorted({Path(name).stem for name, _, _ in self.signature})


def lore_folder(npcs_dir: str | Path) -> Path:
    return Path(npcs_dir) / "lore"


def lore_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix in LORE_SUFFIXES and p.is_file() and not p.name.startswith("."))


def folder_signature(folder: Path) -> Signature:
    """Names, modification times and sizes of the lore files: cheap to take every turn."""
    signature = []
    for path in lore_files(folder):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked
            continue
        signature.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


# -- validation messages -------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        where = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field '{err['loc'][-1]}'; valid fields: {_FIELDS}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
    return lines


def _make_entry(
    data: Any, defaults: dict[str, Any], where: str, problems: list[str], stages: QuestStages | None
) -> LoreEntry | None:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping with id, text and scope, got {type(data).__name__}")
        return None
    try:
        return LoreEntry.model_validate({**defaults, **data}, context={"quest_stages": stages})
    except ValidationError as exc:
        problems.extend(f"{where}: {line}" for line in _errors(exc))
        return None


def _entry_label(index: int, data: Any) -> str:
    entry_id = data.get("id") if isinstance(data, dict) else None
    return f"entries[{index}]" + (f" ({entry_id})" if entry_id else "")


def _yaml_problem(exc: yaml.YAMLError, line_offset: int = 0) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1 + line_offset}, column {mark.column + 1}: " if mark else ""
    return f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}"


# -- YAML files ----------------------------------------------------------------------
def _load_yaml(path: Path, text: str, problems: list[str], stages: QuestStages | None) -> list[LoreEntry]:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        problems.append(f"{path}: {_yaml_problem(exc)}")
        return []
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        problems.append(f"{path}: expected a mapping with an `entries:` list (and optional `defaults:`)")
        return []
    unknown = sorted(set(data) - {"entries", "defaults"})
    if unknown:
        problems.append(f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: entries, defaults")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(f"{path}: defaults: expected a mapping of entry fields")
        defaults = {}
    entries = []
    for i, raw in enumerate(data.get("entries") or []):
        entry = _make_entry(raw, defaults, f"{path}: {_entry_label(i, raw)}", problems, stages)
        if entry is not None:
            entries.append(entry)
    return entries


# -- Markdown files ------------------------------------------------------------------
_HEADING = re.compile(r"^##\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)\s*(\w*)\s*$")


def _yaml_mapping(text: str, where: str, problems: list[str], line_offset: int) -> dict[str, Any] | None:
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        problems.append(f"{where}: {_yaml_problem(exc, line_offset)}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{where}: expected `key: value` lines")
        return None
    return data


def _load_markdown(path: Path, text: str, problems: list[str], stages: QuestStages | None) -> list[LoreEntry]:
    lines = text.splitlines()
    start, defaults = 0, {}
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            problems.append(f"{path}: line 1: front matter opened with `---` is never closed")
            return []
        defaults = _yaml_mapping("\n".join(lines[1:end]), f"{path}: front matter", problems, 1) or {}
        start = end + 1

    # Split into sections at `## ` headings outside fenced code blocks.
    sections: list[tuple[int, str, list[str]]] = []
    fence: str | None = None
    for number, line in enumerate(lines[start:], start=start + 1):
        match = _FENCE.match(line.strip())
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
        heading = _HEADING.match(line) if fence is None else None
        if heading:
            sections.append((number, heading.group(1), []))
        elif sections:
            sections[-1][2].append(line)

    entries = []
    for number, entry_id, body in sections:
        where = f"{path}: line {number} (## {entry_id})"
        meta: dict[str, Any] = {}
        rest = body
        first = next((i for i, line in enumerate(body) if line.strip()), None)
        if first is not None:
            match = _FENCE.match(body[first].strip())
            if match and match.group(2).lower() in ("yaml", "yml"):
                close = next((j for j in range(first + 1, len(body)) if body[j].strip() == match.group(1)), None)
                if close is None:
                    problems.append(f"{where}: the ```yaml block is never closed")
                    continue
                parsed = _yaml_mapping("\n".join(body[first + 1:close]), where, problems, number + first + 1)
                if parsed is None:
                    continue
                meta, rest = parsed, body[close + 1:]
        clash = sorted({"id", "text"} & set(meta))
        if clash:
            problems.append(
                f"{where}: `{'`, `'.join(clash)}` cannot be set in the yaml block: "
                "the heading is the id and the paragraphs below are the text"
            )
            continue
        text = "\n".join(rest)
        if not text.strip():
            problems.append(f"{where}: the entry has no text: write it as paragraphs under the heading")
            continue
        entry = _make_entry({**meta, "id": entry_id, "text": text}, defaults, where, problems, stages)
        if entry is not None:
            entries.append(entry)
    return entries


# -- folders -------------------------------------------------------------------------
def load_lore_file(path: Path, problems: list[str], stages: QuestStages | None = None) -> list[LoreItem]:
    """The entries of one file; problems are appended as `file: place: message` lines.
    With `stages`, entries' `stages` must be among them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return []
    loader = _load_markdown if path.suffix == ".md" else _load_yaml
    return [LoreItem(entry, path.stem, path) for entry in loader(path, text, problems, stages)]


def load_lore_folder(folder: str | Path, stages: QuestStages | Sequence[str] | None = None) -> LoreCollection:
    """Every entry of a lore folder; all problems of all files raise one LoreFileError.

    Entries' `stages` are checked against `stages`, by default the quest stages of the
    game beside the personas (`load_game` of the folder's parent)."""
    folder = Path(folder)
    quest_stages = _as_stages(stages, folder)
    signature = folder_signature(folder)
    problems: list[str] = []
    items: list[LoreItem] = []
    stems: dict[str, Path] = {}
    seen: dict[str, Path] = {}
    for path in lore_files(folder):
        if path.stem in stems:
            problems.append(
                f"{path}: the name '{path.stem}' is also used by {stems[path.stem]}; "
                "personas list lore files by name, so rename or merge one of them"
            )
            continue
        stems[path.stem] = path
        for item in load_lore_file(path, problems, quest_stages):
            if item.id in seen:
                problems.append(f"{path}: entry '{item.id}': the id is already used in {seen[item.id]}; "
                                "ids must be unique")
                continue
            seen[item.id] = path
            items.append(item)
    if problems:
        raise LoreFileError(problems)
    return LoreCollection(folder=folder, items=tuple(items), signature=signature)


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class LoreFolder:
    """A lore folder that reloads itself when its files, or the game file whose quest
    stages its entries are checked against, change (checked by signature)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        self._collection: LoreCollection | None = None
        self._game_signature: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def current(self) -> LoreCollection:
        signature = folder_signature(self.path)
        game_signature = _file_signature(game_file(self.path.parent))
        with self._lock:
            if (self._collection is None or self._collection.signature != signature
                    or self._game_signature != game_signature):
                self._collection = load_lore_folder(self.path)
                self._game_signature = game_signature
            return self._collection
