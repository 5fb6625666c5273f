"""Card text: macros (`{{char}}`, `{{user}}`, ...), V3 decorators (`@@depth 4`), ids.

Macros are converted where they have a meaning here and otherwise removed with a
warning naming the field:

- `{{char}}`, `<BOT>`, `<char>` (and `{{bot}}`): the character's name (V3: its nickname);
- `{{user}}`, `<USER>`: the player. In narration "the player" (`{{user}}'s`: "the
  player's"); in the NPC's own speech (greeting, example replies) the NPC talks to the
  player, so a vocative (`Hello, {{user}}!`) is dropped and any other `{{user}}` is "you"
  (`{{user}}'s`: "your");
- `{{// ...}}`, `{{comment: ...}}`: comments, removed;
- `{{hidden_key: A}}`: in a lorebook entry, A becomes one more keyword of the entry;
- `{{random:A,B}}`, `{{pick:A,B}}`: the first choice (a persona's text is fixed), warned;
- anything else (`{{roll:6}}`, `{{time}}`, ...): removed, warned.

Decorators are the `@@name value` lines at the top of a V3 lorebook entry's content;
`@@@name` lines after one are its fallbacks, used when the decorator before them has no
meaning here (`book.py` decides which have one).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .errors import Warnings

_MACRO = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_ANGLE = re.compile(r"<(user|bot|char)>", re.IGNORECASE)
_CHAR_NAMES = ("char", "bot")


@dataclass
class Converted:
    text: str
    hidden_keys: list[str] = field(default_factory=list)


def _angle_to_macro(text: str) -> str:
    return _ANGLE.sub(lambda m: "{{" + ("user" if m.group(1).lower() == "user" else "char") + "}}", text)


def _choices(argument: str) -> list[str]:
    parts = re.split(r"(?<!\\),", argument.lstrip(":"))
    return [p.replace("\\,", ",").strip() for p in parts]


def _speech_user(text: str) -> str:
    """`{{user}}` where the NPC speaks to the player: vocatives go, the rest is "you"."""
    user = r"\{\{\s*user\s*\}\}"
    text = re.sub(r",\s*" + user + r"(?=\s*[.!?,;:]|\s*$)", "", text, flags=re.IGNORECASE)
    text = re.sub(r"(^|(?<=[.!?]\s)|(?<=\n))" + user + r",\s*(\w)",
                  lambda m: m.group(1) + m.group(2).upper(), text, flags=re.IGNORECASE)
    def pronoun(word: str):
        def replace(match: re.Match[str]) -> str:
            before = match.string[:match.start()].rstrip(" \t*\"'“")
            return word.capitalize() if not before or before[-1] in ".!?\n" else word
        return replace

    text = re.sub(user + r"'s\b", pronoun("your"), text, flags=re.IGNORECASE)
    return re.sub(user, pronoun("you"), text, flags=re.IGNORECASE)


def convert_macros(text: str, where: str, char: str, warnings: Warnings, *, speech: bool = False,
                   lore: bool = False) -> Converted:
    """`text` with its macros converted (see the module doc); `where` names the field in
    warnings. `speech`: the NPC's own words; `lore`: a lorebook entry's content."""
    text = _angle_to_macro(text)
    if speech:
        text = _speech_user(text)
    hidden: list[str] = []

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        name, _, argument = body.partition(":")
        key = name.strip().lower()
        if key in _CHAR_NAMES:
            if not char:
                warnings.add(where, f"macro {match.group(0)} names the card's character, and there is none here: "
                             "it became 'the character' (give --char NAME)")
                before = match.string[:match.start()].rstrip()
                return "The character" if not before or before[-1] in ".!?" else "the character"
            return char
        if key == "user":
            return "the player"
        if body.startswith("//") or key == "comment":
            return ""
        if key == "hidden_key":
            if lore:
                hidden.append(argument.strip())
            else:
                warnings.add(where, f"macro {match.group(0)} only has a meaning in lorebook entries; removed")
            return ""
        if key in ("random", "pick"):
            choices = _choices(argument)
            warnings.add(where, f"macro {match.group(0)} picks at random in a card app; a persona's text is fixed, "
                         f"so it became its first choice '{choices[0]}'")
            return choices[0]
        warnings.add(where, f"macro {match.group(0)} has no meaning here; removed")
        return ""

    before = text
    start = r"(?:^|(?<=[.!?]\s)|(?<=\n))"  # "{{user}} arrives" -> "The player arrives"
    text = re.sub(start + r"\{\{\s*user\s*\}\}", "The player", text, flags=re.IGNORECASE)
    text = re.sub(r"\{\{\s*user\s*\}\}'s\b", "the player's", text, flags=re.IGNORECASE)
    text = _MACRO.sub(replace, text)
    if text != before:  # tidy where a macro went ("Hello !"); text without macros stays as written
        text = re.sub(r"[ \t]+([.,!?;:])", r"\1", text)
        text = re.sub(r"[ \t]{2,}", " ", text)
    return Converted(text.strip(), [k for k in hidden if k])


# -- decorators ------------------------------------------------------------------------
@dataclass(frozen=True)
class Decorator:
    name: str
    value: str
    line: str
    fallback: bool  # an `@@@` line: a fallback of the decorator before it


def split_decorators(content: str) -> tuple[list[Decorator], str]:
    """The decorator lines at the top of a lorebook entry's content, and the rest."""
    lines = content.split("\n")
    decorators = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("@@"):
            fallback = line.startswith("@@@")
            name, _, value = line.lstrip("@").partition(" ")
            decorators.append(Decorator(name.strip().lower(), value.strip(), lines[index].rstrip(), fallback))
        elif line and decorators:
            break
        elif line:
            return [], content
        index += 1
    return decorators, "\n".join(lines[index:]).strip("\n")


def decorator_groups(decorators: list[Decorator]) -> list[list[Decorator]]:
    """Each decorator with the fallbacks after it, in order."""
    groups: list[list[Decorator]] = []
    for decorator in decorators:
        if decorator.fallback and groups:
            groups[-1].append(decorator)
        else:
            groups.append([decorator])
    return groups


# -- ids and prose -------------------------------------------------------------------
def slug(text: str, max_len: int = 40) -> str:
    """snake_case ASCII of `text` ('Brann the Smith!' -> 'brann_the_smith')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    out = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return out[:max_len].rstrip("_")


def npc_id_from(name: str) -> str:
    """A persona id (`^[a-z][a-z0-9_]*$`) from a card's name."""
    out = slug(name)
    if not out:
        return "npc"
    return out if out[0].isalpha() else f"npc_{out}"


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]*[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """`text` split into sentences (at . ! ? before a capital, and at line breaks)."""
    out = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip()]
    return out


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def one_line(text: str) -> str:
    return " ".join(text.split())


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else an empty one (card fields are untrusted JSON)."""
    return value if isinstance(value, dict) else {}
