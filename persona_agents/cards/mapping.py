"""A character card's fields onto a persona, its lorebook onto lore entries.

- `name`: `name` (and the id, in snake_case, unless `--id` says otherwise);
- `description`: `role` is its first sentence (in a card exported by persona-agents: its
  first paragraph), a leading "NAME is" or "NAME," dropped (the prompt says "You are
  Brann, a blacksmith..."); the rest is the `backstory`;
- `personality`: `traits` (a "Traits:" line, or sentences that are short comma lists),
  `speaking_style` (a "Speaking style:" line, or sentences on how the character talks);
  its other sentences end the backstory;
- `first_mes`: the first example line (the player's part: "Hello.");
- `mes_example`: `example_lines`, each `{{user}}:` message with the `{{char}}:` reply;
- `scenario`: a lore entry `ID_scenario` in the NPC's own lore file (no keywords: found
  by meaning);
- `character_book`: lore entries in `lore/ID.yaml` (see `book.py`); constant entries end
  the backstory;
- `extensions.persona_agents`: what a card exported by persona-agents carries for it: the
  id, the persona's other fields, each lore entry's file, scope and gates;
- anything else: kept in the side file `ID.card-extra.json`, restored on export.

Macros are converted (`text.py`); what has no meaning here is warned, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .book import EntryPlan, book_level_notes, entry_fingerprint, plan_entries
from .errors import CardError, Warnings
from .source import V1_FIELDS, CardFile
from .text import as_dict, convert_macros, npc_id_from, one_line, paragraphs, sentences

EXTENSION = "persona_agents"
FIRST_MES_PLAYER = "Hello."
#: Card fields mapped onto the persona (their originals are kept in the side file).
MAPPED_FIELDS = V1_FIELDS
#: Persona fields the card's own fields give (the rest come from the extension or defaults).
CARD_PERSONA_FIELDS = ("id", "name", "role", "backstory", "traits", "speaking_style", "example_lines")
#: Card fields that shape a card app's prompt but have no counterpart here.
PROMPT_FIELDS = {
    "system_prompt": "the prompt steps write the system prompt here",
    "post_history_instructions": "the prompt steps write the prompt here",
    "alternate_greetings": "an NPC has one greeting here, its first example line",
    "group_only_greetings": "there are no group chats here",
}
ROLE_MAX_CHARS = 300
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_LABEL = re.compile(r"^\s*(traits|speaking style|speech|style)\s*:\s*(.*)$", re.IGNORECASE)
_SPEECH = re.compile(r"\b(speaks?|speaking|talks?|talking|voice|accent|says|tone|words|sentences|dialect|speech|"
                     r"stutters?|whispers?|mutters?|drawl|formal|slang)\b", re.IGNORECASE)
_PRONOUN = re.compile(r"^(he|she|they|i|it|you|his|her|their|my|we|this|that|when|if)\b", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*(\{\{\s*user\s*\}\}|<user>|\{\{\s*char\s*\}\}|\{\{\s*bot\s*\}\}|<bot>|<char>)\s*:\s?(.*)$",
                      re.IGNORECASE)


@dataclass
class MappedCard:
    npc_id: str
    persona: dict[str, Any]  # every persona field the card gives (not yet pruned against _defaults.yaml)
    plans: list[EntryPlan]  # the character book's entries, in book order
    scenario: EntryPlan | None
    side: dict[str, Any]  # the side file (its `book.entries` filled in by the caller's plan)
    warnings: Warnings
    book_options: dict[str, int] = field(default_factory=dict)


def persona_fingerprint(name: str, role: str, backstory: str, traits: list[str], speaking_style: str,
                        example_lines: list[tuple[str, str]]) -> str:
    """What export compares to tell a persona edited since import from one that was not."""
    data = [one_line(name), one_line(role), one_line(backstory), list(traits), one_line(speaking_style),
            [[one_line(p), one_line(n)] for p, n in example_lines]]
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _role_phrase(sentence: str, names: list[str]) -> str:
    """"Brann is a gruff smith." (or "Brann, a gruff smith.") -> "a gruff smith." (the prompt
    says "You are NAME, ROLE")."""
    named = "|".join(re.escape(n) for n in names if n)
    match = re.match(rf"^(?:(?:{named}|he|she|they|it)\s+(?:is|was|are)\s+|(?:{named}),\s+)(.+)$", sentence,
                     re.IGNORECASE | re.DOTALL)
    return match.group(1) if match else sentence


def _labelled(text: str) -> tuple[str, dict[str, str]]:
    """`Traits: ...` and `Speaking style: ...` lines taken out of `text`."""
    labels: dict[str, str] = {}
    rest = []
    for line in text.splitlines():
        match = _LABEL.match(line)
        if match:
            key = "traits" if match.group(1).lower() == "traits" else "style"
            labels[key] = (labels.get(key, "") + " " + match.group(2).strip()).strip()
        else:
            rest.append(line)
    return "\n".join(rest), labels


def _trait_list(text: str) -> list[str]:
    separator = ";" if ";" in text else ","
    return [t.strip().rstrip(".") for t in text.split(separator) if t.strip().rstrip(".")]


def _as_traits(sentence: str) -> list[str] | None:
    """The items of a sentence that is a short list ("Gruff, direct and fair."), else None."""
    body = sentence.strip().rstrip(".!")
    items = [re.sub(r"^(and|or)\s+", "", i.strip(), flags=re.IGNORECASE) for i in re.split(r"[,;/]", body)]
    items = [i for i in items if i]
    if not items or any(len(i.split()) > 4 or _PRONOUN.match(i) for i in items):
        return None
    if len(items) == 1 and " and " in items[0]:
        items = [i.strip() for i in items[0].split(" and ")]
    if len(items) == 1 and len(items[0].split()) > 2:
        return None
    if items[0][:1].isupper() and items[0][1:] == items[0][1:].lower():
        items[0] = items[0][0].lower() + items[0][1:]
    return items


def split_personality(text: str) -> tuple[list[str], str, str]:
    """(traits, speaking style, other sentences) of a card's personality."""
    rest, labels = _labelled(text)
    traits = _trait_list(labels["traits"]) if "traits" in labels else []
    style = [labels["style"]] if "style" in labels else []
    prose = []
    for sentence in sentences(rest):
        if _SPEECH.search(sentence):
            style.append(sentence)
            continue
        items = _as_traits(sentence)
        if items:
            traits += [t for t in items if t not in traits]
        else:
            prose.append(sentence)
    return traits, " ".join(style), " ".join(prose)


def parse_examples(text: str, where: str, char: str, warnings: Warnings) -> list[tuple[str, str]]:
    """`mes_example` as (player, npc) pairs: blocks start with `<START>`, messages with
    `{{user}}:` or `{{char}}:` (or the character's name), continuation lines join the
    message before them."""
    name_speaker = re.compile(rf"^\s*{re.escape(char)}\s*:\s?(.*)$") if char else None
    pairs: list[tuple[str, str]] = []
    for number, block in enumerate(re.split(r"<START>", text, flags=re.IGNORECASE), start=0):
        messages: list[list[str]] = []
        for line in block.splitlines():
            match = _SPEAKER.match(line)
            if match:
                speaker = "player" if "user" in match.group(1).lower() else "npc"
                said = match.group(2)
            elif name_speaker is not None and name_speaker.match(line):
                speaker, said = "npc", name_speaker.match(line).group(1)  # type: ignore[union-attr]
            elif messages:
                messages[-1][1] += "\n" + line
                continue
            else:
                if line.strip():
                    warnings.add(where, f"block {number}: text before the first `{{{{user}}}}:` or "
                                 f"`{{{{char}}}}:` is not an example line; left out")
                continue
            if messages and messages[-1][0] == speaker:
                messages[-1][1] += "\n" + said
            else:
                messages.append([speaker, said])
        pending: str | None = None
        for speaker, said in messages:
            if speaker == "player":
                pending = said
            elif pending is None:
                warnings.add(where, f"block {number}: the character speaks before the player; an example line "
                             "is a player's line and the reply: left out (kept in the side file)")
            else:
                player = convert_macros(pending, where, char, warnings).text
                npc = convert_macros(said, where, char, warnings, speech=True).text
                if player and npc:
                    pairs.append((player, npc))
                pending = None
        if pending is not None:
            warnings.add(where, f"block {number}: the player's last line has no reply; left out")
    return pairs


def map_card(card: CardFile, *, npc_id: str | None, retrieve: str, full_pipeline: bool,
             taken_ids: set[str]) -> MappedCard:
    """The persona fields, lore entries and side file of a card (nothing is written).

    `retrieve`: the retrieve step for a card without our extension (`keyword_lore`,
    `faiss_lore` or `none`); `full_pipeline`: write all five stages (the NPC folder has
    no `_defaults.yaml` pipeline to merge under it)."""
    data, p, warnings = card.data, card.prefix, card.warnings
    extensions = dict(data.get("extensions") or {})
    own = extensions.pop(EXTENSION, None)
    own = as_dict(own)
    own_persona = as_dict(own.get("persona"))
    name = data["name"].strip()
    npc_id = npc_id or (own.get("id") if isinstance(own.get("id"), str) else None) or npc_id_from(name)
    if not _ID.match(npc_id):
        raise CardError([f"{card.path}: id {npc_id!r}: a persona id is snake_case: a letter, then a-z, 0-9, _ "
                         "(give another with --id)"])
    char = (data.get("nickname") or "").strip() or name

    # description -> role, backstory; personality -> traits, speaking style
    description = convert_macros(data.get("description") or "", f"{p}description", char, warnings).text
    description, desc_labels = _labelled(description)
    parts = paragraphs(description)
    if not parts:
        role = f"{name}, a character from a character card."
        warnings.add(f"{p}description", f"empty: the role says only '{role}'; write one line on who the NPC is")
        rest = []
    elif own and len(parts[0]) <= ROLE_MAX_CHARS:  # our export: the first paragraph is the role
        role, rest = _role_phrase(one_line(parts[0]), [name, char]), parts[1:]
    else:
        first, *others = sentences(parts[0])
        role = _role_phrase(first, [name, char])
        rest = [" ".join(others)] + parts[1:] if others else parts[1:]
    personality = convert_macros(data.get("personality") or "", f"{p}personality", char, warnings).text
    traits, style, prose = split_personality(personality + "\n" + "\n".join(
        f"{'Traits' if k == 'traits' else 'Speaking style'}: {v}" for k, v in desc_labels.items()))
    backstory_parts = list(rest) + ([prose] if prose else [])

    # first_mes and mes_example -> example lines
    examples: list[tuple[str, str]] = []
    own_first = own.get("first_mes_player")
    first_player = own_first if isinstance(own_first, str) else FIRST_MES_PLAYER
    first = convert_macros(data.get("first_mes") or "", f"{p}first_mes", char, warnings, speech=True).text
    if first:
        examples.append((first_player, first))
    examples += parse_examples(data.get("mes_example") or "", f"{p}mes_example", char, warnings)

    # scenario -> a lore entry; character_book -> lore entries (constant ones: backstory)
    scope = {"scope": "npc", "known_by": [npc_id]}
    scenario_text = convert_macros(data.get("scenario") or "", f"{p}scenario", char, warnings).text
    scenario = None
    if scenario_text:
        lore: dict[str, Any] = {"id": f"{npc_id}_scenario", "text": scenario_text, **scope, "tags": ["scenario"]}
        taken_ids.add(f"{npc_id}_scenario")
        scenario = EntryPlan(-1, f"{p}scenario", {}, "written", scenario_text, lore, npc_id, (float("-inf"), 0, -1))
        if retrieve == "keyword_lore" and "pipeline" not in own_persona:
            warnings.add(f"{p}scenario", f"written as lore entry {lore['id']} without keywords: keyword_lore never "
                         "retrieves it (faiss_lore finds it by meaning: --retrieve faiss_lore)")
    book = data.get("character_book")
    plans: list[EntryPlan] = []
    book_options: dict[str, int] = {}
    if isinstance(book, dict):
        plans = plan_entries(book.get("entries") or [], prefix=f"{p}character_book.entries", char=char, file=npc_id,
                             id_prefix=npc_id, scope=scope, taken_ids=taken_ids, warnings=warnings,
                             constant_to_backstory=True)
        book_options = book_level_notes(book, f"{p}character_book", warnings)
    backstory_parts += [plan.text for plan in plans if plan.status == "constant"]
    backstory = "\n\n".join(part for part in backstory_parts if part)

    persona: dict[str, Any] = {"id": npc_id, "name": name, "role": role}
    if backstory:
        persona["backstory"] = backstory
    if traits:
        persona["traits"] = traits
    if style:
        persona["speaking_style"] = style
    if examples:
        persona["example_lines"] = [{"player": a, "npc": b} for a, b in examples]
    for key, value in own_persona.items():
        if key not in CARD_PERSONA_FIELDS:
            persona[key] = value
    written = {plan.file for plan in plans if plan.status == "written"} | ({npc_id} if scenario else set())
    if "knowledge" not in own_persona and written:
        persona["knowledge"] = {"lore": sorted(written, key=lambda f: (f != npc_id, f))}
    if "pipeline" not in own_persona:
        persona["pipeline"] = _pipeline(retrieve if written else "none", book_options, full_pipeline)

    side = _side_file(card, own, extensions, warnings)
    side["mapped"] = {
        "fields": {key: data[key] for key in MAPPED_FIELDS if key in data},
        "fingerprint": persona_fingerprint(name, role, backstory, traits, style, examples),
        "first_mes": bool(first),
        "first_mes_player": first_player,
    }
    if scenario is not None:
        side["mapped"]["scenario_entry"] = {"id": scenario.lore_id, "fingerprint": entry_fingerprint(scenario_text, [])}
    if isinstance(book, dict):
        side["book"] = {"fields": {k: v for k, v in book.items() if k != "entries"}, "entries": [
            {"status": plan.status, "lore_id": plan.lore_id, "file": plan.file or None,
             "fingerprint": entry_fingerprint(plan.text, (plan.lore or {}).get("keywords", [])),
             **({"backstory_text": plan.text} if plan.status == "constant" else {}),
             "original": plan.original} for plan in plans]}
    return MappedCard(npc_id, persona, plans, scenario, side, warnings, book_options)


def _pipeline(retrieve: str, book_options: dict[str, int], full: bool) -> dict[str, Any]:
    steps: list[Any] = []
    if retrieve == "keyword_lore":
        steps = [{"name": "keyword_lore", "options": book_options} if book_options else "keyword_lore"]
    elif retrieve == "faiss_lore":
        budget = {k: v for k, v in book_options.items() if k == "max_lore_tokens"}
        steps = [{"name": "faiss_lore", "options": budget} if budget else "faiss_lore"]
    if not full:
        return {"retrieve": steps}
    return {"preprocess": ["normalize_input"], "retrieve": steps, "prompt": ["chat_template"],
            "generate": [{"name": "transformers", "options": {"model": "embedded"}}], "postprocess": ["game_rules"]}


def _side_file(card: CardFile, own: dict[str, Any], extensions: dict[str, Any], warnings: Warnings) -> dict[str, Any]:
    """What the card holds that the persona does not: kept, and restored on export."""
    data, p = card.data, card.prefix
    kept = {k: v for k, v in data.items() if k not in MAPPED_FIELDS and k not in ("character_book", "extensions")}
    for key, why in PROMPT_FIELDS.items():
        if data.get(key):
            warnings.add(f"{p}{key}", f"no counterpart ({why}); kept in the side file")
    depth_prompt = extensions.get("depth_prompt")
    if isinstance(depth_prompt, dict) and depth_prompt.get("prompt"):
        warnings.add(f"{p}extensions.depth_prompt", "a character's note put into the chat at a depth has no "
                     "counterpart here; kept in the side file")
    return {
        "about": ("Kept by `persona-agents import card`: what the card holds that the persona does not. "
                  "`persona-agents export card` restores it; edit the persona, not this file."),
        "format": 1,
        "source": {"file": card.path.name, "container": card.container, "spec": card.spec or "v1",
                   "spec_version": card.spec_version},
        "root": card.root,
        "data": kept,
        "extensions": extensions,
        "own_extension": {k: v for k, v in own.items() if k != "persona"},
    }
