"""Domain errors of persona-agents.

Core code raises only these; the CLI turns them into readable messages and the HTTP
server into problem responses. Every message names the object, the place, the valid
choices where there are any, and the fix.
"""

from __future__ import annotations


class PersonaAgentsError(Exception):
    """Base class of every error a user can cause and fix."""


class PersonaFileError(PersonaAgentsError):
    """One or more problems in persona files, one `file: field.path: message` line each."""

    def __init__(self, problems: list[str], header: str | None = None):
        self.problems = list(problems)
        lines = [header or f"{len(self.problems)} problem(s) in persona files:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UnknownNpcError(PersonaAgentsError):
    def __init__(self, npc_id: str, available: list[str], npcs_dir: str):
        self.npc_id = npc_id
        self.available = available
        super().__init__(
            f"Unknown NPC '{npc_id}' in {npcs_dir}. "
            f"Available: {', '.join(available) or '(none)'}."
        )


class PluginError(PersonaAgentsError):
    """A plugin failed to load, misspelled a hook, or registered a duplicate step."""


class InputError(PersonaAgentsError):
    """Untrusted input (a player's line, a request field) was rejected."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class RequestIdConflictError(PersonaAgentsError):
    """A request_id already answered for this (player, NPC) came back with a different request."""

    field = "request_id"

    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(
            f"request_id: '{request_id}' was already used with a different request (utterance, context or "
            "seed) for this player and NPC; send a new request_id for a new request, or repeat the original "
            "request exactly to get its stored response."
        )


class ModelLoadError(PersonaAgentsError):
    """A model, tokenizer or embedded weight file could not be found or loaded."""


class StepError(PersonaAgentsError):
    """A pipeline step failed while running a turn."""


class LoreError(PersonaAgentsError):
    """Lore files, knowledge references or the lore index cannot be used."""


class LoreFileError(LoreError):
    """One or more problems in lore files, one `file: entry: field: message` line each."""

    def __init__(self, problems: list[str], header: str | None = None):
        self.problems = list(problems)
        lines = [header or f"{len(self.problems)} problem(s) in lore files:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class TrainingDataError(PersonaAgentsError):
    """Problems in training or evaluation data, one `file:line: field: message` line each."""

    def __init__(self, problems: list[str], header: str | None = None, shown: int = 30):
        self.problems = list(problems)
        lines = [header or f"{len(self.problems)} problem(s) in training data:"]
        lines += [f"  {p}" for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"  ... and {len(self.problems) - shown} more")
        super().__init__("\n".join(lines))


class TrainingConfigError(PersonaAgentsError):
    """Incompatible or invalid training options."""


class AdapterError(PersonaAgentsError):
    """A trained adapter is missing, incomplete, or does not match the base model or flags."""
