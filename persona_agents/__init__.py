"""persona-agents: NPCs with a voice, a memory and a say in the game's state."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (plugins write `from persona_agents import hookimpl`)

__all__ = ["__version__", "hookimpl"]
