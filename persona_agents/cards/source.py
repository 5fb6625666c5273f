"""Reading card and lorebook files: JSON or PNG in, a checked dictionary out.

- A character card is Character Card V2 (`spec: chara_card_v2`) or V3
  (`chara_card_v3`) as JSON, or a PNG carrying it base64-encoded in a text chunk
  (`ccv3` for V3, preferred where both are present; `chara` for V2). A card without
  `spec` (V1, the fields at the top level) is read too, with a warning.
- A lorebook is V3's `{spec: lorebook_v3, data: {...}}`, a bare character book
  (`{entries: [...]}`), or a SillyTavern world-info file (`{entries: {"0": {...}}}`).

The file is detected by its content (the PNG signature), not its suffix. Every problem
is a `file: field: message` line of one CardError; nothing is read half.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CardError, Warnings
from .png import is_png, read_text_chunks
from .text import as_dict

CARD_SPECS = ("chara_card_v2", "chara_card_v3")
#: The string fields of a card's `data` (V2 and V3) and their lists of strings.
STRING_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
                 "system_prompt", "post_history_instructions", "creator", "character_version", "nickname")
LIST_FIELDS = ("alternate_greetings", "tags", "group_only_greetings", "source")
#: V1 fields a V2 card may mirror at the top level for old readers.
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")


@dataclass
class CardFile:
    path: Path
    spec: str  # chara_card_v2, chara_card_v3, or "" for a V1 card
    spec_version: str | None
    data: dict[str, Any]
    root: dict[str, Any]  # top-level keys other than spec, spec_version and data
    container: str  # json | png
    chunk: str | None = None  # the PNG text chunk it came from
    warnings: Warnings = field(default_factory=Warnings)

    @property
    def prefix(self) -> str:
        """How fields are named in messages: `data.description` (V1: `description`)."""
        return "data." if self.spec else ""


@dataclass
class BookFile:
    path: Path
    kind: str  # lorebook_v3 | character_book | world_info | card (a card's character_book)
    book: dict[str, Any]  # the book with `entries` a list (world info: converted, see book.py)
    prefix: str  # how the entries are named in messages: "data.entries", "entries"
    warnings: Warnings = field(default_factory=Warnings)
    char: str = ""  # what {{char}} is: a card's name (a standalone lorebook has no character)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError([f"{where}: invalid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CardError([f"{path}: cannot read: {exc.strerror or exc}"]) from None


def read_json_or_png(path: Path) -> tuple[Any, str, str | None]:
    """(parsed JSON, container, chunk) of a card or lorebook file."""
    raw = _read_bytes(path)
    if is_png(raw):
        texts = read_text_chunks(raw, path)
        chunk = "ccv3" if "ccv3" in texts else ("chara" if "chara" in texts else None)
        if chunk is None:
            found = ", ".join(sorted(texts)) or "none"
            raise CardError([f"{path}: the PNG holds no character card: no `ccv3` (V3) or `chara` (V2) text chunk "
                             f"(text chunks found: {found})"])
        try:
            text = base64.b64decode(texts[chunk].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise CardError([f"{path}: PNG chunk `{chunk}`: not base64-encoded UTF-8 JSON: {exc}"]) from None
        return _json(text, f"{path}: PNG chunk `{chunk}`"), "png", chunk
    if path.suffix.lower() == ".png":
        raise CardError([f"{path}: not a PNG file (its first bytes are not the PNG signature)"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError([f"{path}: not UTF-8 text (nor a PNG): {exc}"]) from None
    return _json(text, str(path)), "json", None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def check_book(book: Any, where: str, problems: list[str]) -> None:
    """Types of a character book / lorebook (`entries` a list of entry objects)."""
    if not isinstance(book, dict):
        problems.append(f"{where}: expected an object with `entries`, got {_type_name(book)}")
        return
    entries = book.get("entries")
    if not isinstance(entries, list):
        problems.append(f"{where}.entries: expected a list of entries, got {_type_name(entries)}")
        return
    for i, entry in enumerate(entries):
        at = f"{where}.entries[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{at}: expected an entry object, got {_type_name(entry)}")
            continue
        for key in ("keys", "secondary_keys"):
            value = entry.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
                problems.append(f"{at}.{key}: expected a list of strings, got {_type_name(value)}")
        if not isinstance(entry.get("content", ""), str):
            problems.append(f"{at}.content: expected a string, got {_type_name(entry.get('content'))}")
        for key in ("enabled", "constant", "selective", "case_sensitive", "use_regex"):
            value = entry.get(key)
            if value is not None and not isinstance(value, bool):
                problems.append(f"{at}.{key}: expected true or false, got {value!r}")
        for key in ("insertion_order", "priority"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"{at}.{key}: expected a number, got {value!r}")
        if entry.get("extensions") is not None and not isinstance(entry.get("extensions"), dict):
            problems.append(f"{at}.extensions: expected an object, got {_type_name(entry.get('extensions'))}")


def read_card(path: Path) -> CardFile:
    """A character card from JSON or PNG, its types checked; raises CardError."""
    path = Path(path)
    parsed, container, chunk = read_json_or_png(path)
    where = f"{path}" + (f" (PNG chunk `{chunk}`)" if chunk else "")
    if not isinstance(parsed, dict):
        raise CardError([f"{where}: expected a JSON object (a character card), got {_type_name(parsed)}"])
    spec = parsed.get("spec")
    warnings = Warnings()
    if spec in CARD_SPECS:
        data = parsed.get("data")
        if not isinstance(data, dict):
            raise CardError([f"{where}: data: a {spec} card keeps its fields in a `data` object; "
                             f"got {_type_name(data)}"])
        root = {k: v for k, v in parsed.items() if k not in ("spec", "spec_version", "data")}
        version = parsed.get("spec_version")
        if spec == "chara_card_v3":
            try:
                newer = float(str(version)) > 3.0
            except ValueError:
                newer = False
            if newer:
                warnings.add("spec_version", f"'{version}' is newer than 3.0, which this importer knows; "
                             "fields it does not know are kept in the side file")
        card = CardFile(path, spec, None if version is None else str(version), data, root, container, chunk, warnings)
    elif spec == "lorebook_v3":
        raise CardError([f"{where}: spec: 'lorebook_v3' is a lorebook, not a character card; import it with "
                         f"`persona-agents import lorebook {path} --scope ...`"])
    elif spec is None and isinstance(parsed.get("name"), str) and "entries" not in parsed:
        warnings.add("spec", "missing: read as a V1 card (its fields at the top level)")
        card = CardFile(path, "", None, dict(parsed), {}, container, chunk, warnings)
    else:
        raise CardError([f"{where}: spec: {spec!r} is not a character card spec; expected one of "
                         f"{', '.join(CARD_SPECS)} (a lorebook goes through `persona-agents import lorebook`)"])
    problems: list[str] = []
    data = card.data
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}: {card.prefix}name: the card has no name; every persona needs one "
                        "(set the card's name and import it again)")
    for key in STRING_FIELDS:
        value = data.get(key)
        if key != "name" and value is not None and not isinstance(value, str):
            problems.append(f"{where}: {card.prefix}{key}: expected a string, got {_type_name(value)}")
    for key in LIST_FIELDS:
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{where}: {card.prefix}{key}: expected a list of strings, got {_type_name(value)}")
    if data.get("extensions") is not None and not isinstance(data.get("extensions"), dict):
        problems.append(f"{where}: {card.prefix}extensions: expected an object, got "
                        f"{_type_name(data.get('extensions'))}")
    if data.get("character_book") is not None:
        book_problems: list[str] = []
        check_book(data["character_book"], f"{card.prefix}character_book", book_problems)
        problems += [f"{where}: {p}" for p in book_problems]
    if problems:
        raise CardError(problems)
    return card


def read_lorebook(path: Path) -> BookFile:
    """A standalone lorebook (V3, a bare character book, SillyTavern world info, or the
    book of a character card); raises CardError."""
    from .book import world_info_to_book

    path = Path(path)
    parsed, _container, chunk = read_json_or_png(path)
    where = f"{path}" + (f" (PNG chunk `{chunk}`)" if chunk else "")
    if not isinstance(parsed, dict):
        raise CardError([f"{where}: expected a JSON object (a lorebook), got {_type_name(parsed)}"])
    warnings = Warnings()
    char = ""
    spec = parsed.get("spec")
    if spec == "lorebook_v3":
        book, prefix, kind = parsed.get("data"), "data", "lorebook_v3"
    elif spec in CARD_SPECS:
        data = as_dict(parsed.get("data"))
        book, prefix, kind = data.get("character_book"), "data.character_book", "card"
        char = str(data.get("nickname") or data.get("name") or "").strip()
        if book is None:
            raise CardError([f"{where}: data.character_book: this character card has no lorebook"])
        warnings.add("spec", f"{spec}: a character card; its lorebook (data.character_book) is imported")
    elif spec is None and isinstance(parsed.get("entries"), dict):
        wrong: list[str] = []
        _check_world_info(parsed, wrong)
        if wrong:
            raise CardError([f"{where}: {p}" for p in wrong])
        book, prefix, kind = world_info_to_book(parsed, warnings), "entries", "world_info"
    elif spec is None and isinstance(parsed.get("entries"), list):
        book, prefix, kind = parsed, "", "character_book"
    else:
        raise CardError([f"{where}: spec: {spec!r}: not a lorebook; expected `spec: lorebook_v3`, a SillyTavern "
                         "world-info file (`entries` keyed by number) or a character book (`entries` list)"])
    if kind != "world_info":
        problems: list[str] = []
        check_book(book, prefix or "(top level)", problems)
        if problems:
            raise CardError([f"{where}: {p}" for p in problems])
    assert isinstance(book, dict)
    return BookFile(path, kind, book, f"{prefix}.entries" if prefix and kind != "world_info" else "entries", warnings,
                    char)


def _check_world_info(parsed: dict[str, Any], problems: list[str]) -> None:
    for key, entry in parsed["entries"].items():
        at = f"entries.{key}"
        if not isinstance(entry, dict):
            problems.append(f"{at}: expected an entry object, got {_type_name(entry)}")
            continue
        for name in ("key", "keysecondary"):
            value = entry.get(name)
            if value is not None and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
                problems.append(f"{at}.{name}: expected a list of strings, got {_type_name(value)}")
        if not isinstance(entry.get("content", ""), str):
            problems.append(f"{at}.content: expected a string, got {_type_name(entry.get('content'))}")
