"""Prompt control markers, and neutralising them in untrusted text.

A player's line (and anything else from the game client) is pasted into prompts, so it
must never be able to close a section, open a new role, or end the NPC's turn. Every
prompt step passes request-derived text through `neutralize()` before rendering:

1. Unicode NFKC folds look-alikes (fullwidth `＜`, compatibility forms) into plain
   characters, so they cannot slip past the next steps and be read as markers later.
2. Invisible format characters (zero-width joiners, bidi overrides) are removed: they
   can hide a marker from a reader while the tokenizer still sees one.
3. Angle brackets become the single guillemets `‹ ›`: every sectioned marker
   (`<PLAYER>`) and every chat-template token (`<|im_start|>`, `<start_of_turn>`, `</s>`)
   needs them, and dialogue never does.
4. Any other special token of the model's tokenizer (e.g. `[INST]`) is broken apart.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

SECTION_MARKERS: tuple[str, ...] = (
    "<SYS>", "</SYS>", "<RAG>", "</RAG>", "<PLAYER_STATE>", "</PLAYER_STATE>",
    "<CTX>", "</CTX>", "<PLAYER>", "<STATE>", "<NPC>",
)
#: Version 2 of the sectioned prompt adds the persona's events and example lines, the
#: game's decision and the writers' lines it fits (prompt_format.render_sectioned_v2).
SECTION_MARKERS_V2: tuple[str, ...] = (
    *SECTION_MARKERS, "<EVENTS>", "</EVENTS>", "<EXAMPLES>", "</EXAMPLES>", "<DECISION>", "<LINES>", "</LINES>",
)


def section_markers(version: int) -> tuple[str, ...]:
    """The special tokens an adapter trained on sectioned prompt `version` has."""
    return SECTION_MARKERS if version == 1 else SECTION_MARKERS_V2  # version 3: version 2's, reordered


#: Markers that end the NPC's reply when a model writes them.
REPLY_STOP_MARKERS: tuple[str, ...] = ("<PLAYER>", "<NPC>", "<STATE>", "</CTX>", "<SYS>", "<DECISION>", "<LINES>",
                                       "<|im_end|>", "<|im_start|>")

#: Special tokens of common model families written without angle brackets.
BRACKETLESS_SPECIAL_TOKENS: tuple[str, ...] = (
    "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]",
)

_WHITESPACE_KEEP = {"\n", "\t", " "}
_MARKER_LIKE = re.compile(r"<\s*/?\s*\|?[A-Za-z_][A-Za-z0-9_|]*\|?\s*>")


def neutralize(text: str, special_tokens: Iterable[str] = ()) -> str:
    """`text` with every way of forging a prompt marker taken away (see module doc)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        ch for ch in text if ch in _WHITESPACE_KEEP or unicodedata.category(ch) not in ("Cf", "Cc", "Co", "Cs")
    )
    text = text.replace("<", "‹").replace(">", "›")
    for token in (*BRACKETLESS_SPECIAL_TOKENS, *special_tokens):
        if len(token) > 1 and token in text:
            # A zero-width break would be stripped by the next normalisation; a visible
            # separator keeps the token from ever being re-read as one piece.
            text = text.replace(token, token[0] + "\u00b7" + token[1:])
    return text


def contains_marker(text: str, special_tokens: Iterable[str] = ()) -> bool:
    """True if `text` holds anything a tokenizer or prompt parser would read as a marker."""
    if _MARKER_LIKE.search(text):
        return True
    return any(token in text for token in special_tokens if len(token) > 1)


def strip_markers(text: str, special_tokens: Iterable[str] = ()) -> str:
    """Model output with any marker-like token removed (a reply never shows markers)."""
    text = _MARKER_LIKE.sub("", text)
    for token in special_tokens:
        if len(token) > 1:
            text = text.replace(token, "")
    return text
