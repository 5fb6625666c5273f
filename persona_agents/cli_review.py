"""`persona-agents review`: blind reviews of NPC replies (see persona_agents/review.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import friendly_errors, setup_logging


@click.group()
def review():
    """Blind reviews: a packet with shuffled candidates, then the scores unblinded."""


def _config(value: str) -> tuple[str, str]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not Path(folder).is_dir():
        raise click.BadParameter(f"{value!r}: write NAME=NPC_FOLDER with an existing folder (e.g. today=npcs).",
                                 param_hint="--config")
    return name, folder


@review.command("packet")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Held-out turns in the training-data JSONL format (never turns you tuned on).")
@click.option("--config", "configs", multiple=True, required=True,
              help="NAME=NPC_FOLDER, one per configuration to compare (its personas and pipelines).")
@click.option("--reference", is_flag=True, help="Add the data's own reply as one more candidate.")
@click.option("--turns", type=click.IntRange(1, 10_000), default=60, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="Which turns, their order and sampling seeds.")
@click.option("--world", type=click.Path(dir_okay=False), default=None,
              help="A text file of the world's premises, shown to reviewers at the top of the packet.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for packet.md, key.json, auto.json.")
@friendly_errors
def packet(data, configs, reference, turns, seed, world, out):
    """Play held-out turns through each configuration and write a blind review packet."""
    from .review import make_packet

    setup_logging()
    parsed = [_config(c) for c in configs]
    with click.progressbar(length=turns, label="Playing turns", file=click.get_text_stream("stderr")) as bar:
        auto = make_packet(data, parsed, out, turns=turns, seed=seed, reference=reference, world=world,
                           progress=lambda done, total: bar.update(1))
    click.echo(f"Wrote {out}/packet.md (give it to reviewers with the rubric at its top), {out}/key.json "
               f"(keep it from them) and {out}/auto.json.")
    click.echo(json.dumps(auto, indent=1))


@review.command("unblind")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@friendly_errors
def unblind_cmd(key_path, scores):
    """Turn reviewers' score files (one per reviewer) and the key into a table per configuration."""
    from .review import format_table, unblind

    click.echo(format_table(unblind(key_path, scores)))
