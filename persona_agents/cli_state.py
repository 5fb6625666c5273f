"""`persona-agents state show|reset|export`: what the state store holds for a player."""

from __future__ import annotations

import json

import click

from .cli_common import db_option, friendly_errors, open_store


@click.group()
def state():
    """Show, reset or export a player's stored conversations."""


def _player_options(func):
    func = click.option("--npc", "npc_id", default=None, help="Only this NPC.")(func)
    func = click.option("--player", "player_id", required=True, help="The player's id.")(func)
    return db_option(func)


@state.command("show")
@_player_options
@friendly_errors
def state_show(player_id, npc_id, db_url):
    """Each NPC's state towards the player, the flags fired so far and what it remembers."""
    store = open_store(db_url)
    data = store.export(player_id, npc_id)
    if not data["npcs"] and not data.get("heard_only"):
        click.echo(f"No stored conversation for player '{player_id}'" + (f" with '{npc_id}'" if npc_id else "")
                   + f" in {store.safe_url}.")
        return
    for npc, entry in data["npcs"].items():
        s = entry["state"]
        flags = ", ".join(f"{f['flag']}@{f['turn']}" for f in entry["flags_fired"]) or "none"
        axes = "".join(f", {axis} {value:+.2f}" for axis, value in (s.get("axes") or {}).items())
        click.echo(f"{npc}: trust {s['trust']:.2f}, relationship {s['relationship']:+.2f}, mood {s['mood']}, "
                   f"quest {s['quest_stage']}{axes}, turns {s['turns']}, flags fired: {flags}")
        _show_memories(entry["memories"])
    for npc, memories in data.get("heard_only", {}).items():
        click.echo(f"{npc}: no conversation yet")
        _show_memories(memories)


def _show_memories(memories) -> None:
    for m in memories:
        heard = f", from {m['source']}" if m["source"] else ""
        click.echo(f"  memory {m['id']} (turn {m['turn']}, {m['kind']}{heard}): {m['text']}")


@state.command("reset")
@_player_options
@friendly_errors
def state_reset(player_id, npc_id, db_url):
    """Forget the player's conversations (with one NPC, or all)."""
    removed = open_store(db_url).reset(player_id, npc_id)
    click.echo(f"Reset {removed} conversation(s) of player '{player_id}'.")


@state.command("export")
@_player_options
@friendly_errors
def state_export(player_id, npc_id, db_url):
    """Everything stored for the player as JSON: state, flags, history, turn records."""
    click.echo(json.dumps(open_store(db_url).export(player_id, npc_id), indent=2, ensure_ascii=False))
