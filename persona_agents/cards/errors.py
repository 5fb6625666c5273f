"""Errors of card and lorebook import and export.

Each problem is one `file: field: message` line, as persona and lore files report theirs;
an error raised before anything is written means nothing was written.
"""

from __future__ import annotations

from ..errors import PersonaAgentsError, _ProblemList


class CardError(_ProblemList, PersonaAgentsError):
    """A card, lorebook or PNG that cannot be read or mapped; or outputs that would be
    overwritten without --force. One `file: field: message` line per problem."""

    where = "the card"


class Warnings(list):
    """What did not map exactly, one `field: message` line each, in the order found
    (the CLI prints them all, prefixed with the file)."""

    def add(self, field: str, message: str) -> None:
        line = f"{field}: {message}" if field else message
        if line not in self:
            self.append(line)
