"""`persona-agents run-dialogue --scene NPC1,NPC2,...`: talk to a group scene.

Each player line goes to the scene; the framework chooses who answers (persona_agents/
scenes/), and each NPC's reply is printed after its name, with why it answered. One
scene turn is committed at a time, all of it or nothing.
"""

from __future__ import annotations

import json
from typing import Sequence

import click

from .cli_dialogue import play_given_lines
from .errors import PersonaAgentsError
from .manager import AgentManager
from .scenes.runner import SceneResponse, check_scene
from .turn import GameContext

SCENE_HELP = "Commands: /state shows each NPC's state, /reset starts over, /quit leaves."


def parse_scene(value: str) -> list[str]:
    """`a,b,c` -> ["a", "b", "c"] (spaces ignored, empty parts refused)."""
    npcs = [part.strip() for part in value.split(",")]
    if not all(npcs):
        raise click.BadParameter(f"{value!r}: give NPC ids separated by commas, e.g. brann,pip", param_hint="--scene")
    return npcs


def format_scene_turn(manager: AgentManager, response: SceneResponse) -> str:
    from .cli_dialogue import format_turn

    out = []
    for reply in response.replies:
        out.append(format_turn(reply.name, reply.response))
        out.append(f"    (answers: {reply.reason}{_how(response)})")
    return "\n".join(out)


def _how(response: SceneResponse) -> str:
    how = str((response.choice.get("detail") or {}).get("how") or "")
    return {"vocative": ", addressed by name", "named": ", named in the line", "game": ", chosen by the game"}.get(
        how, "")


def run_scene_dialogue(manager: AgentManager, npcs: Sequence[str], scene_id: str, player_id: str,
                       lines: Sequence[str], as_json: bool, seed: int | None, context: GameContext,
                       max_speakers: int) -> None:
    """Play `lines` in the scene (or talk interactively when there are none)."""
    check_scene(manager, npcs)
    names = ", ".join(f"{manager.get_persona(n).persona.name} ({n})" for n in npcs)
    click.echo(f"Loading the scene {scene_id}: {names}...", err=True)
    for npc_id in npcs:
        manager.warm_up(npc_id)

    def one_turn(line: str) -> None:
        response = manager.scene_turn(scene_id, list(npcs), line, player_id, context=context, seed=seed,
                                      max_speakers=max_speakers)
        if as_json:
            click.echo(json.dumps(response.to_dict(), ensure_ascii=False))
        else:
            click.echo(format_scene_turn(manager, response))

    if play_given_lines(list(lines), as_json, one_turn):
        return
    click.echo(f"In the scene {scene_id} with {names}. {SCENE_HELP}", err=True)
    while True:
        try:
            line = click.prompt("You", prompt_suffix=": ", default="", show_default=False, err=True).strip()
        except (EOFError, click.exceptions.Abort):
            click.echo("", err=True)
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line in ("/state", "/reset"):
            for npc_id in npcs:
                state = (manager.reset(player_id, npc_id) if line == "/reset"
                         else manager.conversation(player_id, npc_id).state)
                click.echo(f"{npc_id}: {json.dumps(state.to_dict())}")
            continue
        if line.startswith("/"):
            click.echo(f"Unknown command {line}. {SCENE_HELP}", err=True)
            continue
        try:
            one_turn(line)
        except PersonaAgentsError as exc:  # a bad line should not end the scene
            click.echo(f"Error: {exc}", err=True)
