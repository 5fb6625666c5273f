"""Character cards and lorebooks in and out (issue 31).

Writers of AI characters author SillyTavern character cards (V2 `chara_card_v2`, V3
`chara_card_v3`, often with an embedded lorebook, usually shared as a PNG); this package
turns them into personas and lore files, and personas back into cards:

- `png`: PNG text chunks (`chara`, `ccv3`) read and written with the standard library;
- `source`: a card or lorebook file (JSON or PNG) read and checked;
- `text`: macros (`{{char}}`, `{{user}}`, ...), V3 decorators (`@@depth`), ids;
- `mapping`: a card's fields onto persona fields (the table is in its docstring);
- `book`: lorebook entries onto lore entries and back;
- `importer`: the files an import writes, checked before any is written, then written
  atomically;
- `export`: a persona and its lore as a V2 card, with what its side file kept.

The CLI is `persona_agents/cli_cards.py` (`persona-agents import card|lorebook`,
`persona-agents export card`); the guide is docs/cards-and-stories.md.
"""

from .errors import CardError, Warnings

__all__ = ["CardError", "Warnings"]
