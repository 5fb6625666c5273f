"""`persona-agents run-dialogue`: talk to one NPC (interactive, one line, a script, JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import click

from .cli_common import (
    db_option,
    friendly_errors,
    make_manager,
    npcs_dir_option,
    open_store,
    plugins_dir_option,
    setup_logging,
)
from .errors import PersonaAgentsError
from .turn import GameContext, TurnResponse

HELP_LINE = "Commands: /state shows the NPC's state, /reset starts over, /quit leaves."


def read_script(path: Path) -> list[str]:
    """Player lines from a script: one per line (# comments, blank lines skipped), or a
    YAML/JSON list of strings."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise click.ClickException(f"{path}: expected a list of player lines (strings).")
        return data
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def play_given_lines(lines: list[str], as_json: bool, one_turn: Callable[[str], None]) -> bool:
    """Play the lines given (--say, --script), or piped in JSON mode (one per input line);
    False when there are none: the conversation is interactive."""
    if lines:
        for line in lines:
            if not as_json:
                click.echo(f"You: {line}")
            one_turn(line)
        return True
    if not sys.stdin.isatty() and as_json:
        for line in sys.stdin:
            if line.strip():
                one_turn(line.strip())
        return True
    return False


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def format_turn(name: str, response: TurnResponse) -> str:
    flags = ", ".join(f.name for f in response.flags) or "none"
    s = response.state
    lines = [
        f"{name}: {response.text or '(no words)'}",
        f"    deltas: trust {_signed(response.deltas.trust)}, relationship {_signed(response.deltas.relationship)}"
        + "".join(f", {axis} {_signed(value)}" for axis, value in response.deltas.axes.items())
        + f" | flags: {flags}",
        f"    state: trust {s.trust:.2f}, relationship {s.relationship:+.2f}, mood {s.mood}, quest {s.quest_stage}"
        + "".join(f", {axis} {value:+.2f}" for axis, value in s.axes.items()),
    ]
    if response.flags_rejected:
        lines.append("    rejected: " + ", ".join(f"{f.name} ({f.reason})" for f in response.flags_rejected))
    note = response.meta.get("state_heads")
    if note:
        lines.append(f"    ({note})")
    return "\n".join(lines)


@click.command("run-dialogue")
@click.option("--npc", "npc_id", default=None, help="The NPC's id (see `persona-agents npcs list`).")
@click.option("--scene", "scene", default=None,
              help="Talk to a group scene instead: the ids of the NPCs present, comma-separated (e.g. "
              "blacksmith_village_center,merchant_traveling,guard_city_gate). Each line goes to the scene and the "
              "NPCs that answer are printed by name.")
@click.option("--scene-id", default="scene", show_default=True, help="The scene's id (its lines are kept per scene).")
@click.option("--max-speakers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="In a scene, at most this many NPCs answer one line.")
@npcs_dir_option
@plugins_dir_option
@click.option("--player", "player_id", default=None,
              help="The player's id: the conversation is stored and continues across runs. "
              "Without it the conversation lasts as long as this command.")
@db_option
@click.option("--say", "say", multiple=True, help="Say this line and exit (repeat for several turns).")
@click.option("--script", "script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of player lines, one per line.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per turn on stdout.")
@click.option("--seed", type=int, default=None, help="Seed for sampling: the same seed gives the same replies.")
@click.option("--quest-stage", default=None, help="The game's quest stage for this NPC (overrides stored state).")
@click.option("--item", "items", multiple=True, help="An item the player holds (repeatable).")
@click.option("--action", "actions", multiple=True, help="An action the player has done (repeatable).")
@click.option("--location", default=None, help="Where the conversation happens.")
@friendly_errors
def run_dialogue(npc_id, scene, scene_id, max_speakers, npcs_dir, plugins_dir, player_id, db_url, say, script,
                 as_json, seed, quest_stage, items, actions, location):
    """Talk to an NPC, or to a group scene (--scene): interactively, or with --say / --script."""
    if (npc_id is None) == (scene is None):
        raise click.UsageError("Give either --npc (one NPC) or --scene (several, comma-separated).")
    if scene is not None and quest_stage is not None:
        raise click.UsageError("--quest-stage is for one NPC; in a scene each NPC's stored stage is used.")
    setup_logging()
    store = open_store(db_url) if player_id is not None else None
    player_id = player_id or "player"
    manager = make_manager(npcs_dir, plugins_dir, store)
    if scene is not None:
        from .cli_scene import parse_scene, run_scene_dialogue

        context = GameContext(location=location, items=tuple(items), actions=tuple(actions))
        lines = list(say) + (read_script(script) if script else [])
        run_scene_dialogue(manager, parse_scene(scene), scene_id, player_id, lines, as_json, seed, context,
                           max_speakers)
        return
    persona = manager.get_persona(npc_id).persona
    click.echo(f"Loading {persona.name} ({npc_id})...", err=True)
    manager.warm_up(npc_id)
    context = GameContext(quest_stage=quest_stage, location=location, items=tuple(items), actions=tuple(actions))

    def one_turn(line: str) -> None:
        response = manager.turn(npc_id, line, player_id=player_id, context=context, seed=seed)
        if as_json:
            click.echo(json.dumps(response.to_dict(), ensure_ascii=False))
        else:
            click.echo(format_turn(persona.name, response))

    if play_given_lines(list(say) + (read_script(script) if script else []), as_json, one_turn):
        return

    click.echo(f"Talking to {persona.name}. {HELP_LINE}", err=True)
    while True:
        try:
            line = click.prompt("You", prompt_suffix=": ", default="", show_default=False, err=True)
        except (EOFError, click.exceptions.Abort):
            click.echo("", err=True)
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/state":
            state = manager.conversation(player_id, npc_id).state
            click.echo(json.dumps(state.to_dict()) if as_json else f"state: {state.to_dict()}")
            continue
        if line == "/reset":
            state = manager.reset(player_id, npc_id)
            click.echo(f"Conversation reset. state: {state.to_dict()}", err=True)
            continue
        if line.startswith("/"):
            click.echo(f"Unknown command {line}. {HELP_LINE}", err=True)
            continue
        try:
            one_turn(line)
        except PersonaAgentsError as exc:  # a bad line should not end the conversation
            click.echo(f"Error: {exc}", err=True)
