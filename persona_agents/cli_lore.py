"""`persona-agents index-lore` and `persona-agents lore search`: build and debug lore."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click

from .cli_common import friendly_errors, make_manager, npcs_dir_option, plugins_dir_option, setup_logging

DEFAULT_OPTIONS = {"k": 4, "min_score": 0.3, "max_lore_tokens": 200, "embedder": "embedded"}


def _faiss_options(loaded) -> dict:
    """The NPC's faiss_lore options, or the step's defaults when it uses another step."""
    for name, options in loaded.step_options.get("retrieve", ()):
        if name == "faiss_lore":
            return options.model_dump()
    return dict(DEFAULT_OPTIONS)


def _retrieve_step(loaded) -> str:
    steps = [name for name, _ in loaded.step_options.get("retrieve", ())]
    return steps[0] if steps else "(none)"


def describe_scope(entry) -> str:
    if entry.scope == "npc":
        scope = "npc: " + ", ".join(entry.known_by)
    elif entry.scope == "faction":
        scope = "faction: " + ", ".join(entry.factions)
    else:
        scope = "world"
    if entry.stages is not None:
        scope += " | stages: " + ", ".join(entry.stages)
    if entry.min_trust is not None:
        scope += f" | trust >= {entry.min_trust:.2f}"
    if entry.min_relationship is not None:
        scope += f" | relationship >= {entry.min_relationship:+.2f}"
    if entry.requires_items:
        scope += " | items: " + ", ".join(entry.requires_items)
    if entry.requires_actions:
        scope += " | actions: " + ", ".join(entry.requires_actions)
    return scope


def describe_facts(facts) -> str:
    text = f"stage '{facts.stage}', trust {facts.trust:.2f}, relationship {facts.relationship:+.2f}"
    if facts.items:
        text += ", items: " + ", ".join(sorted(facts.items))
    if facts.actions:
        text += ", actions: " + ", ".join(sorted(facts.actions))
    return text


def _all_open(entry):
    """Facts under which every stage and gate of `entry` holds (to tell scope from gates)."""
    from .lore.scope import LoreFacts

    return LoreFacts(
        stage=entry.stages[0] if entry.stages else None, trust=1.0, relationship=1.0,
        items=frozenset(entry.requires_items), actions=frozenset(entry.requires_actions),
    )


def _echo_entry(score: float, item, note: str = "") -> None:
    click.echo(f"{score:6.3f}  {item.id}  [{describe_scope(item.entry)}]  {item.path.name}"
               + (f"  ({note})" if note else ""))
    click.echo(textwrap.fill(item.text, width=100, initial_indent=" " * 8, subsequent_indent=" " * 8))


@click.command("index-lore")
@npcs_dir_option
@plugins_dir_option
@click.option("--rebuild", is_flag=True, help="Embed every entry again instead of only new and changed ones.")
@click.option("--embedder", default=None,
              help="Index for this sentence embedder only (default: those the NPCs' faiss_lore steps name).")
@friendly_errors
def index_lore(npcs_dir, plugins_dir, rebuild, embedder):
    """Check the lore files and build or update their search index (only changes are embedded)."""
    from tqdm import tqdm

    from .lore.index import LoreIndex, index_dir
    from .lore.scope import check_knowledge

    setup_logging()
    manager = make_manager(npcs_dir, plugins_dir)
    runtime = manager.runtime
    folder = runtime.lore.folder(npcs_dir)
    collection = folder.current()  # every lore file problem is reported here, at once
    for npc_id in manager.npc_ids():
        persona = manager.get_persona(npc_id).persona
        check_knowledge(npc_id, persona.knowledge, collection)
    refs = [embedder] if embedder else sorted(
        {_faiss_options(manager.get_persona(n))["embedder"] for n in manager.npc_ids()
         if _retrieve_step(manager.get_persona(n)) == "faiss_lore"} or {"embedded"}
    )
    for ref in refs:
        loaded = runtime.embedders.get(ref)
        index = LoreIndex(folder, loaded, index_dir(runtime.cache_dir, Path(npcs_dir), loaded.name), Path(npcs_dir))
        with tqdm(total=0, desc=f"Embedding lore ({loaded.name})", unit="entry", file=sys.stderr,
                  disable=None, leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            report = index.sync(rebuild=rebuild, progress=progress)
        because = f"; rebuilt because {report.rebuilt_because}" if report.rebuilt_because else (
            "; new index" if report.created else "")
        click.echo(
            f"Lore index for {npcs_dir} with {loaded.name}: {report.entries} entries "
            f"({report.embedded} embedded, {report.reused} reused, {report.removed} removed{because})\n"
            f"  {report.path}"
        )


@click.group("lore")
def lore():
    """Debug lore: what an NPC would retrieve, and why."""


@lore.command("search")
@click.option("--npc", "npc_id", required=True, help="The NPC's id (see `persona-agents npcs list`).")
@click.option("--stage", default=None, help="Quest stage (default: the NPC's initial quest_stage).")
@click.option("--trust", type=float, default=None, help="The NPC's trust in the player (default: its initial trust).")
@click.option("--relationship", type=float, default=None,
              help="The relationship with the player (default: the NPC's initial relationship).")
@click.option("--item", "items", multiple=True,
              help="An item the player holds (repeatable), for entries' requires_items.")
@click.option("--action", "actions", multiple=True,
              help="An action the player has done (repeatable), for entries' requires_actions.")
@click.option("--k", type=int, default=None, help="How many entries (default: the NPC's faiss_lore k).")
@click.option("--show-hidden", is_flag=True, help="Also show the best entries the NPC may NOT know, and why.")
@click.option("--keywords", "use_keywords", is_flag=True, help="Show keyword_lore matches instead of meaning search.")
@npcs_dir_option
@plugins_dir_option
@click.argument("query", nargs=-1, required=True)
@friendly_errors
def lore_search(npc_id, stage, trust, relationship, items, actions, k, show_hidden, use_keywords, npcs_dir,
                plugins_dir, query):
    """Show what an NPC would retrieve for QUERY, with scores, scope and text.

    The NPC is taken at a quest stage and state (--stage, --trust, --relationship,
    --item, --action; by default its initial state, holding nothing): entries whose
    stage or gates do not hold are withheld, and --show-hidden says why
    ("trust 0.15 < 0.50")."""
    from .lore.retrieval import keyword_search, matched_keywords, semantic_search, within_budget
    from .lore.scope import LoreFacts, check_knowledge, hidden_reason, visible_items

    setup_logging()
    text = " ".join(query)
    manager = make_manager(npcs_dir, plugins_dir)
    loaded = manager.get_persona(npc_id)
    persona, runtime = loaded.persona, manager.runtime
    initial = persona.initial_state
    facts = LoreFacts(
        stage=stage or initial.quest_stage,
        trust=initial.trust if trust is None else trust,
        relationship=initial.relationship if relationship is None else relationship,
        items=frozenset(items),
        actions=frozenset(actions),
    )
    options = _faiss_options(loaded)
    k = k or options["k"]
    collection = runtime.lore.folder(npcs_dir).current()
    check_knowledge(npc_id, persona.knowledge, collection)
    visible = visible_items(collection.items, npc_id, persona.knowledge, facts)
    click.echo(
        f"{persona.name} ({npc_id}) at {describe_facts(facts)}: knows {len(visible)} of {len(collection.items)} "
        f"entries; retrieve step: {_retrieve_step(loaded)}; k={k}, min_score={options['min_score']}, "
        f"max_lore_tokens={options['max_lore_tokens']}"
    )
    if use_keywords:
        hits = keyword_search(collection, text, [], npc_id, persona.knowledge, facts, k)
        for hit in hits:
            _echo_entry(hit.score, hit.item, "keywords: " + ", ".join(matched_keywords(hit.item, text)))
        if not hits:
            click.echo("(no keyword of a visible entry appears in the query)")
        _echo_withheld(collection, npc_id, persona.knowledge, facts)
        return

    index = runtime.lore.index(npcs_dir, runtime.embedders.get(options["embedder"]), runtime.cache_dir)
    hits = semantic_search(index, text, npc_id, persona.knowledge, facts, k=k)
    scored = [h for h in hits if h.score >= options["min_score"]]
    kept = {id(h) for h in within_budget(scored, options["max_lore_tokens"])}
    for hit in hits:
        note = "" if id(hit) in kept else (
            f"below min_score {options['min_score']}: not used" if hit.score < options["min_score"]
            else "over the lore token budget: not used")
        _echo_entry(hit.score, hit.item, note)
    if not hits:
        click.echo("(the NPC knows no entry at this stage and state)")
    if show_hidden:
        click.echo("\nHidden from this NPC at this stage (best matches among all entries):")
        vector = index.embedder.encode([text])[0]
        shown = 0
        for entry_id, score in index.search(vector, len(collection.items), None):
            reason = hidden_reason(collection.by_id[entry_id], npc_id, persona.knowledge, facts)
            if reason and shown < k:
                _echo_entry(score, collection.by_id[entry_id], reason)
                shown += 1
        if not shown:
            click.echo("(none)")
    _echo_withheld(collection, npc_id, persona.knowledge, facts)


def _echo_withheld(collection, npc_id, knowledge, facts) -> None:
    """Entries this NPC knows (file and scope) that the quest stage or the state keeps
    from it now, each with why: `trust 0.15 < 0.50`, `player lacks city_pass`..."""
    from .lore.scope import gate_reason, hidden_reason

    withheld = []
    for item in collection.items:
        entry = item.entry
        if entry.stages is None and not entry.gated:
            continue
        reason = hidden_reason(item, npc_id, knowledge, facts)
        if reason and hidden_reason(item, npc_id, knowledge, _all_open(entry)) is None:
            gate = gate_reason(entry, facts)
            withheld.append((item, reason if gate in (None, reason) else f"{reason}; {gate}"))
    if withheld:
        click.echo("\nWithheld from this NPC until the game allows it (stage or gates):")
        for item, reason in withheld:
            click.echo(f"        {item.id}  [{describe_scope(item.entry)}]  ({reason})")

