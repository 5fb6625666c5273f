"""The `persona-agents` command: personas, plugins and steps, and dialogue."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import __version__
from .cli_cards import export_group, import_group
from .cli_common import friendly_errors, npcs_dir_option, plugins_dir_option
from .cli_dialogue import run_dialogue
from .cli_init import init_game
from .cli_lore import index_lore, lore
from .cli_review import review
from .cli_serve import serve
from .cli_state import state
from .cli_test import test_plans
from .cli_train import evaluate, fit_matcher_cmd, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="persona-agents")
def main():
    """persona-agents: NPCs with a voice, a memory and a say in the game's state."""


main.add_command(init_game)
main.add_command(run_dialogue)
main.add_command(index_lore)
main.add_command(lore)
main.add_command(state)
main.add_command(serve)
main.add_command(test_plans)
main.add_command(train)
main.add_command(evaluate)
main.add_command(fit_matcher_cmd)
main.add_command(review)
main.add_command(import_group)
main.add_command(export_group)


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

    host = _host_for(npcs_dir, plugins_dir)
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
    host = _host_for(npcs_dir, plugins_dir)
    for info in host.plugins:
        click.echo(f"{info.name:<24} {info.source:<40} steps: {', '.join(info.steps) or '-'}")


@main.group()
def npcs():
    """List, show and validate persona files."""


def _plugins_dir_for(npcs_dir: Path, plugins_dir: Path | None) -> Path:
    """The local plugins folder: --plugins-dir, else plugins/ in the game folder."""
    from .runtime import plugins_dir_of

    return plugins_dir_of(npcs_dir, plugins_dir)


def _host_for(npcs_dir: Path, plugins_dir: Path | None):
    from .plugins import load_plugins

    return load_plugins(_plugins_dir_for(npcs_dir, plugins_dir))


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
    """Check persona files (a folder, or one file) and report every problem, including
    adapters, model folders and plugin steps that personas name but cannot be found."""
    from .errors import PersonaFileError
    from .persona_loader import load_defaults, load_persona_file, load_personas, persona_files

    target = path or npcs_dir
    folder = target if target.is_dir() else target.parent
    local_plugins = _plugins_dir_for(folder, plugins_dir)
    host = _host_for(folder, plugins_dir)
    files = persona_files(target) if target.is_dir() else [target]
    problems: list[str] = []
    count = 0
    try:
        if target.is_dir():
            count = len(load_personas(target, host.registry))
        else:
            defaults = load_defaults(folder, problems)
            if problems:
                raise PersonaFileError(problems)
            load_persona_file(target, host.registry, defaults)
            count = 1
    except PersonaFileError as exc:
        problems = list(exc.problems)
    found, notes = _missing_files(files, folder, host, local_plugins)
    problems = _with_notes(problems, notes) + [p for p in found if p not in problems]
    if problems:
        raise PersonaFileError(problems)
    click.echo(f"OK: {count} persona file(s) valid in {target}")


def _missing_files(files: list[Path], npcs_dir: Path, host, local_plugins: Path) -> tuple[list[str], dict[str, str]]:
    """What personas name but cannot be found: a folder or model path a step option names
    (steps declare such options in `path_options`), a step no plugin registers.

    Returns (problems, notes): a note completes the loader's own line for the same field
    (`file: pipeline.STAGE[i]: ...`) with where plugins were looked for."""
    from .fileutil import load_yaml
    from .persona import STAGES
    from .persona_loader import DEFAULTS_FILE, deep_merge, load_defaults
    from .runtime import game_dir, is_keyword, looks_like_path, resolve_game_path

    problems: list[str] = []
    notes: dict[str, str] = {}
    base = game_dir(npcs_dir)
    defaults = load_defaults(npcs_dir, [])
    for file in files:
        try:
            own = load_yaml(Path(file).read_text(encoding="utf-8")) or {}
        except Exception:  # unreadable or invalid YAML: the loader reports it
            continue
        if not isinstance(own, dict):
            continue
        merged = deep_merge(defaults, own)
        pipeline = merged.get("pipeline")
        if not isinstance(pipeline, dict):
            continue
        own_pipeline = own["pipeline"] if isinstance(own.get("pipeline"), dict) else {}
        for stage in STAGES:
            specs = pipeline.get(stage)
            if not isinstance(specs, list):
                continue
            origin = "" if stage in own_pipeline else f" (from {DEFAULTS_FILE})"
            for index, spec in enumerate(specs):
                if isinstance(spec, str):
                    spec = {"name": spec}
                if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                    continue
                where = f"{file}: pipeline.{stage}[{index}]"
                info = host.registry.get(spec["name"])
                if info is None:
                    notes[where + ": "] = _plugin_note(spec["name"], host, local_plugins)
                    continue
                options = spec["options"] if isinstance(spec.get("options"), dict) else {}
                for option, kind in getattr(info.cls, "path_options", {}).items():
                    field = info.cls.Options.model_fields.get(option)
                    value = options.get(option, field.default if field is not None else None)
                    if not isinstance(value, str) or not value:
                        continue
                    given = "" if option in options else " (the step's default)"
                    if kind == "model" and is_keyword(value):
                        continue
                    if kind == "model" and not looks_like_path(value):
                        # A folder of the game, or else a model id (not checked: it may be in
                        # the Hugging Face cache). A folder found only from the working
                        # directory is named: it no longer resolves there.
                        if not (base / value).exists() and Path(value).exists():
                            problems.append(
                                f"{where}.options.{option}: {option} {value!r}{origin} is not in the game folder; "
                                f"looked at {base / value} (relative paths resolve against the game folder, not "
                                f"the working directory; give {Path(value).resolve()} to keep using that one)")
                        continue
                    looked = resolve_game_path(value, npcs_dir)
                    label = f"{option} folder" if kind == "folder" else f"{option} path"
                    if not looked.exists():
                        relative = "" if Path(value).expanduser().is_absolute() else \
                            f" (relative paths resolve against the game folder {base})"
                        problems.append(f"{where}.options.{option}: {label} {value!r}{given}{origin} does not "
                                        f"exist; looked at {looked}{relative}")
                    elif kind == "folder" and not looked.is_dir():
                        problems.append(f"{where}.options.{option}: {label} {value!r}{origin} is not a folder; "
                                        f"looked at {looked}")
    return problems, notes


def _plugin_note(name: str, host, local_plugins: Path) -> str:
    if not local_plugins.is_dir():
        where = "that folder does not exist"
    else:
        found = sorted(p.name for p in local_plugins.glob("*.py") if not p.name.startswith("_"))
        where = "found: " + ", ".join(found) if found else "no *.py files there"
    installed = [p.name for p in host.plugins if p.source.startswith("entry point")]
    return (f"No built-in plugin, installed plugin (installed: {', '.join(installed) or 'none'}) or local plugin "
            f"registers step '{name}'; local plugins were looked for in {local_plugins}/*.py ({where}).")


def _with_notes(problems: list[str], notes: dict[str, str]) -> list[str]:
    """The loader's lines, each unknown step's completed with where plugins were looked
    for; a note the loader has no line for becomes a line of its own."""
    out, used = [], set()
    for line in problems:
        prefix = next((p for p in notes if line.startswith(p)), None)
        if prefix is not None:
            used.add(prefix)
            line = f"{line} {notes[prefix]}"
        out.append(line)
    out += [f"{prefix.removesuffix(': ')}.name: {note}" for prefix, note in notes.items() if prefix not in used]
    return out
