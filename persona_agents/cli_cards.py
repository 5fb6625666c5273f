"""`persona-agents import card|lorebook` and `persona-agents export card`: character cards
and lorebooks in, cards out (see docs/cards-and-stories.md)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import click

from .cli_common import friendly_errors, npcs_dir_option, plugins_dir_option

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _report(plan, dry_run: bool) -> None:
    from .cards.importer import write_plan

    source = plan.source
    for line in plan.warnings:
        click.echo(f"warning: {source}: {line}", err=True)
    if dry_run:
        for output in plan.outputs:
            state = "unchanged" if output.unchanged else ("would replace" if output.exists else "would write")
            click.echo(f"{state}: {output.path} ({output.what})")
        click.echo("Dry run: nothing was written.")
        return
    written = write_plan(plan)
    for output in plan.outputs:
        if output.unchanged:
            click.echo(f"Unchanged {output.path} (it already holds these entries)")
    for output in written:
        click.echo(f"{'Replaced' if output.exists else 'Wrote'} {output.path} ({output.what})")
    for note in plan.notes:
        click.echo(f"note: {note}")
    if plan.warnings:
        click.echo(f"{len(plan.warnings)} warning(s) (above): what did not map exactly", err=True)


@click.group("import")
def import_group():
    """Bring in characters and lore written for other tools (SillyTavern character cards
    and lorebooks)."""


@import_group.command("card")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@npcs_dir_option
@plugins_dir_option
@click.option("--id", "npc_id", default=None,
              help="The persona id (default: the id a persona-agents card carries, else the card's name in "
              "snake_case).")
@click.option("--retrieve", type=click.Choice(["keyword_lore", "faiss_lore", "none"]), default="keyword_lore",
              show_default=True,
              help="Retrieve step for the card's lorebook (a card exported by persona-agents keeps its own pipeline).")
@click.option("--force", is_flag=True, help="Replace the persona, its side file and its lore file if they exist.")
@click.option("--dry-run", is_flag=True, help="Check the card and show what would be written; write nothing.")
@friendly_errors
def import_card(file, npcs_dir, plugins_dir, npc_id, retrieve, force, dry_run):
    """Import a Character Card V2 or V3 (JSON, or the PNG it is shared as) as a persona,
    its lorebook as a lore file, and what has no place in a persona as a side file
    (ID.card-extra.json) that `export card` restores."""
    from .cards.importer import plan_card_import

    if npc_id is not None and not _ID.match(npc_id):
        raise click.BadParameter(f"{npc_id!r}: a persona id is snake_case: a letter, then a-z, 0-9, _",
                                 param_hint="--id")
    plan = plan_card_import(file, npcs_dir, npc_id=npc_id, retrieve=retrieve, force=force, plugins_dir=plugins_dir)
    _report(plan, dry_run)
    if not dry_run:
        npc = next(o.path.stem for o in plan.outputs if o.what == "persona")
        click.echo(f"Next: persona-agents npcs validate --npcs-dir {npcs_dir}; "
                   f"persona-agents run-dialogue --npcs-dir {npcs_dir} --npc {npc}")


@import_group.command("lorebook")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scope", type=click.Choice(["world", "faction", "npc"]), required=True,
              help="Who knows the entries: every NPC listing the file (world), a faction's NPCs, or named NPCs.")
@click.option("--known-by", "known_by", multiple=True, help="With --scope npc: an NPC id that knows them (repeatable).")
@click.option("--faction", "factions", multiple=True, help="With --scope faction: a faction (repeatable).")
@click.option("--name", default=None,
              help="The lore file's name (what personas list in knowledge.lore; default: the book's name, else "
              "the file's, in snake_case).")
@click.option("--char", default=None,
              help="What the entries' {{char}} means (default: a card's name; a standalone lorebook has none).")
@npcs_dir_option
@click.option("--force", is_flag=True, help="Replace the lore file and its side file if they exist.")
@click.option("--dry-run", is_flag=True, help="Check the lorebook and show what would be written; write nothing.")
@friendly_errors
def import_lorebook(file, scope, known_by, factions, name, char, npcs_dir, force, dry_run):
    """Import a standalone lorebook (V3 `lorebook_v3`, a SillyTavern world-info file, or a
    character book) as a lore file with the scope you choose."""
    from .cards.importer import plan_lorebook_import

    plan = plan_lorebook_import(file, npcs_dir, scope=scope, known_by=tuple(known_by), factions=tuple(factions),
                                name=name, char=char, force=force)
    _report(plan, dry_run)


@click.group("export")
def export_group():
    """Hand personas to other tools (Character Card V2)."""


@export_group.command("card")
@click.argument("npc_id")
@npcs_dir_option
@plugins_dir_option
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write (default: ID.card.json here); a name ending in .png embeds the card in an image "
              "(its `chara` text chunk).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With a .png --out: the picture to embed the card into (default: a plain square).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@friendly_errors
def export_card_command(npc_id, npcs_dir, plugins_dir, out, image, force):
    """Write an NPC and the lore it may know as a Character Card V2 (JSON or PNG),
    readable by card apps and by `import card`."""
    from .cards.errors import CardError
    from .cards.export import export_card
    from .cards.png import placeholder_image, with_text_chunks
    from .fileutil import atomic_write

    out = out or Path(f"{npc_id}.card.json")
    if out.exists() and not force:
        raise CardError([f"{out}: exists; give --force to replace it"], header="Nothing was written:")
    if image is not None and out.suffix.lower() != ".png":
        raise click.BadParameter("--image needs an --out name ending in .png", param_hint="--image")
    card, warnings = export_card(npc_id, npcs_dir, plugins_dir)
    text = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    if out.suffix.lower() == ".png":
        picture = image.read_bytes() if image is not None else placeholder_image()
        encoded = base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8")).decode("ascii")
        data = with_text_chunks(picture, {"chara": encoded}, image or "placeholder", drop=("ccv3",))
    else:
        data = text.encode("utf-8")
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    book = card["data"].get("character_book") or {}
    click.echo(f"Wrote {out} (Character Card V2 of {npc_id}, {len(book.get('entries', []))} lorebook entries)")
