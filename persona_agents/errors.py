"""Domain errors of persona-agents.

Core code raises only these; the CLI turns them into readable messages and the HTTP
server into problem responses. Every message names the object, the place, the valid
choices where there are any, and the fix.
"""

from __future__ import annotations


class PersonaAgentsError(Exception):
    """Base class of every error a user can cause and fix."""


class _ProblemList(Exception):
    """An error that lists problems, one line each, under a header naming what has them
    (`where`); at most `shown` lines, then how many more."""

    where = "files"
    shown: int | None = None

    def __init__(self, problems: list[str], header: str | None = None):
        self.problems = list(problems)
        lines = [header or f"{len(self.problems)} problem(s) in {self.where}:"]
        lines += [f"  {p}" for p in self.problems[: self.shown]]
        if self.shown is not None and len(self.problems) > self.shown:
            lines.append(f"  ... and {len(self.problems) - self.shown} more")
        super().__init__("\n".join(lines))


class PersonaFileError(_ProblemList, PersonaAgentsError):
    """One or more problems in persona files, one `file: field.path: message` line each."""

    where = "persona files"


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


class LoreFileError(_ProblemList, LoreError):
    """One or more problems in lore files, one `file: entry: field: message` line each."""

    where = "lore files"


class TrainingDataError(_ProblemList, PersonaAgentsError):
    """Problems in training or evaluation data, one `file:line: field: message` line each."""

    where = "training data"
    shown = 30


class TrainingConfigError(PersonaAgentsError):
    """Incompatible or invalid training options."""


class AdapterError(PersonaAgentsError):
    """A trained adapter is missing, incomplete, or does not match the base model or flags."""


class MemoryNotFoundError(PersonaAgentsError):
    """A memory id that an NPC does not hold about a player (HTTP 404 `memory_not_found`)."""

    field = "memory_id"

    def __init__(self, player_id: str, npc_id: str, memory_id: int):
        super().__init__(f"memory_id: {npc_id} holds no memory {memory_id} about player '{player_id}'. "
                         f"GET /v1/players/{player_id}/npcs/{npc_id}/memories lists the ones it holds.")
