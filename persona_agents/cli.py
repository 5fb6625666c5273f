"""The `persona-agents` command: personas, plugins and steps, and dialogue."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import __version__
from .cli_common import friendly_errors, npcs_dir_option, plugins_dir_option
from .cli_dialogue import run_dialogue
from .cli_lore import index_lore, lore
from .cli_review import review
from .cli_serve import serve
from .cli_state import state
from .cli_test import test_plans
from .cli_train import evaluate, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="persona-agents")
def main():
    """persona-agents: NPCs with a voice, a memory and a say in the game's state."""


main.add_command(run_dialogue)
main.add_command(index_lore)
main.add_command(lore)
main.add_command(state)
main.add_command(serve)
main.add_command(test_plans)
main.add_command(train)
main.add_command(evaluate)
main.add_command(review)


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead.")
def schema(output):
    """Print the JSON Schema of persona files (for editor completion and checks)."""
    from .persona import persona_json_schema

    text = json.dumps(persona_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@plugins_dir_option
@npcs_dir_option
@friendly_errors
def steps(plugins_dir, npcs_dir):
    """List every registered step by stage, with the plugin that provides it."""
    from .persona import STAGES
    from .plugins import load_plugins

    host = load_plugins(plugins_dir if plugins_dir is not None else Path(npcs_dir).parent / "plugins")
    for stage in STAGES:
        click.echo(f"{stage}:")
        for info in host.registry.all():
            if info.stage == stage:
                options = ", ".join(
                    f"{name}=" + ("(required)" if field.is_required() else repr(field.default))
                    for name, field in info.cls.Options.model_fields.items()
                )
                click.echo(f"  {info.name:<18} [{info.plugin}] {info.description}")
                if options:
                    click.echo(f"  {'':<18} options: {options}")


@main.command()
@plugins_dir_option
@npcs_dir_option
@friendly_errors
def plugins(plugins_dir, npcs_dir):
    """List loaded plugins, where each came from, and the steps it registers."""
    from .plugins import load_plugins

    host = load_plugins(plugins_dir if plugins_dir is not None else Path(npcs_dir).parent / "plugins")
    for info in host.plugins:
        click.echo(f"{info.name:<24} {info.source:<40} steps: {', '.join(info.steps) or '-'}")


@main.group()
def npcs():
    """List, show and validate persona files."""


def _host_for(npcs_dir: Path, plugins_dir: Path | None):
    from .plugins import load_plugins

    return load_plugins(plugins_dir if plugins_dir is not None else Path(npcs_dir).parent / "plugins")


@npcs.command("list")
@npcs_dir_option
@plugins_dir_option
@friendly_errors
def npcs_list(npcs_dir, plugins_dir):
    """The NPCs of a folder: id, name, location and file."""
    from .persona_loader import load_personas

    for npc_id, loaded in sorted(load_personas(npcs_dir, _host_for(npcs_dir, plugins_dir).registry).items()):
        p = loaded.persona
        click.echo(f"{npc_id:<28} {p.name:<14} {p.location or '-':<18} {loaded.path}")


@npcs.command("show")
@click.argument("npc_id")
@npcs_dir_option
@plugins_dir_option
@friendly_errors
def npcs_show(npc_id, npcs_dir, plugins_dir):
    """One NPC's persona with defaults merged in, as YAML."""
    import yaml

    from .errors import UnknownNpcError
    from .persona_loader import load_personas

    personas = load_personas(npcs_dir, _host_for(npcs_dir, plugins_dir).registry)
    if npc_id not in personas:
        raise UnknownNpcError(npc_id, sorted(personas), str(npcs_dir))
    loaded = personas[npc_id]
    click.echo(f"# {loaded.path} (with {npcs_dir}/_defaults.yaml merged)")
    click.echo(yaml.safe_dump(loaded.persona.model_dump(mode="json"), sort_keys=False, allow_unicode=True), nl=False)


@npcs.command("validate")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@npcs_dir_option
@plugins_dir_option
@friendly_errors
def npcs_validate(path, npcs_dir, plugins_dir):
    """Check persona files (a folder, or one file) and report every problem."""
    from .persona_loader import load_defaults, load_persona_file, load_personas
    from .errors import PersonaFileError

    target = path or npcs_dir
    folder = target if target.is_dir() else target.parent
    host = _host_for(folder, plugins_dir)
    if target.is_dir():
        count = len(load_personas(target, host.registry))
    else:
        problems: list[str] = []
        defaults = load_defaults(folder, problems)
        if problems:
            raise PersonaFileError(problems)
        load_persona_file(target, host.registry, defaults)
        count = 1
    click.echo(f"OK: {count} persona file(s) valid in {target}")
