"""Pieces shared by the CLI commands: options, error handling, the manager factory."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path

import click

from .errors import PersonaAgentsError

NPCS_DIR_ENV = "PERSONA_AGENTS_NPCS_DIR"
DEBUG_ENV = "PERSONA_AGENTS_DEBUG"


def default_npcs_dir() -> str:
    return os.environ.get(NPCS_DIR_ENV, "npcs")


npcs_dir_option = click.option(
    "--npcs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_npcs_dir,
    show_default="npcs (or $PERSONA_AGENTS_NPCS_DIR)",
    help="Folder of persona YAML files.",
)
plugins_dir_option = click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of local plugins (default: plugins/ beside the NPC folder).",
)


def friendly_errors(func):
    """Domain errors become one readable message and exit 1; never a traceback,
    unless PERSONA_AGENTS_DEBUG=1 asks for one."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PersonaAgentsError as exc:
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {exc}\n"
                f"Set {DEBUG_ENV}=1 to see the traceback, and please report it."
            ) from None

    return wrapper


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("persona_agents")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Our own messages and the progress bars are enough; library warnings about
    # generation flags confuse writers.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing;
    # we never download kernels, and the built-in CPU path works.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


db_option = click.option(
    "--db",
    "db_url",
    default=None,
    help="State database URL (default: $PERSONA_AGENTS_DB, else sqlite:///<cache>/state.db). "
    "PostgreSQL works by URL: postgresql+psycopg://user@host/db.",
)


def open_store(db_url: str | None):
    from .store import StateStore

    return StateStore(db_url)


def make_manager(npcs_dir: Path, plugins_dir: Path | None, store=None):
    from .manager import AgentManager

    return AgentManager(npcs_dir=npcs_dir, plugins_dir=plugins_dir, store=store)
