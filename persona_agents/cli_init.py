"""`persona-agents init DIR`: scaffold a game folder of its own.

The folder holds everything a game's dialogue needs, and every relative path in it
resolves against it (see `persona_agents/runtime.py`), so it can live in its own
repository and run from any working directory:

    DIR/README.md                what to run next
    DIR/npcs/_game.yaml          the game: events, quest stages, state axes, moods
    DIR/npcs/_defaults.yaml      merged under every persona: the pipeline
    DIR/npcs/<example>.yaml      one NPC, with flag rules and authored lines
    DIR/npcs/lore/<example>.yaml what it may know
    DIR/npcs/tests/<example>.yaml a golden conversation plan (`persona-agents test`)
    DIR/npcs/persona.schema.json editor completion for persona files
    DIR/plugins/README.md        where local plugins go

A folder that is not empty is refused; `--force` adds the missing files and never
overwrites one that exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml

EXAMPLE_NPC = "lighthouse_keeper"


def _scalar(value: str) -> str:
    """A string as one YAML scalar (quoted only where YAML needs it)."""
    return yaml.safe_dump(value, width=10**6, allow_unicode=True).removesuffix("...\n").strip()


def game_yaml() -> str:
    """`_game.yaml` with the default eight events and their descriptions, commented."""
    from .game import DEFAULT_GAME

    out = [
        "# The game definition: the events NPCs may fire, what each means, the quest stages,",
        "# the state axes and the moods. Personas, lore, test plans, training data and adapters",
        "# are checked against it (`persona-agents npcs validate`).",
        "#",
        "# To add an event, add a key under `events:` (snake_case) with",
        "#   description: what it means in the game, in words (the model reads it to decide)",
        "#   payload: [the fields the game needs with it]       (optional; a persona's rule gives values)",
        "#   sets_stage: the quest stage the NPC's quest moves to (optional; one of quest_stages)",
        "# for example:",
        "#   rent_room:",
        "#     description: the NPC lets the player a room for the night, now",
        "#     payload: [room]",
        "# then allow it per NPC in `flag_rules:`, and train an adapter on data that uses it",
        "# (`persona-agents train` takes these events as its flag vocabulary). To remove an",
        "# event, delete it here and from every persona's flag_rules and lines.",
        "events:",
    ]
    for name, event in DEFAULT_GAME.events.items():
        out.append(f"  {name}:")
        out.append(f"    description: {_scalar(event.description)}")
        if event.payload:
            out.append(f"    payload: [{', '.join(event.payload)}]")
        if event.sets_stage:
            out.append(f"    sets_stage: {event.sets_stage}")
    out += [
        "# The stages of an NPC's quest, in order; personas, lines and lore entries name them.",
        f"quest_stages: [{', '.join(DEFAULT_GAME.quest_stages)}]",
        "# The state each NPC keeps per player: trust and relationship (ranges fixed; the model",
        "# proposes their changes), then any of the game's own, moved only by the events that fire:",
        "#   reputation: {min: -1.0, max: 1.0, initial: 0.0}   and on an event: changes: {reputation: 0.1}",
        "axes:",
    ]
    for name, axis in DEFAULT_GAME.axes.items():
        fields = f"min: {axis.min}, max: {axis.max}, initial: {axis.initial}"
        if axis.description:
            fields += f", description: {_scalar(axis.description)}"
        out.append(f"  {name}: {{{fields}}}")
    out += [
        "# Declared moods; empty: any mood string. Declare them to have personas checked.",
        "moods: []",
    ]
    return "\n".join(out) + "\n"


DEFAULTS_YAML = """\
# Shared defaults, merged under every persona in this folder (a persona's own keys win;
# mappings merge key by key, lists are replaced whole).
language: en
initial_state:
  trust: 0.3
  relationship: 0.0
  mood: neutral
  quest_stage: not_started
generation:
  temperature: 0.7
  top_p: 0.9
  max_new_tokens: 48
  repetition_penalty: 1.15
pipeline:
  preprocess:
    - name: normalize_input
      options: {max_chars: 500}
  retrieve: []
  prompt:
    # An untuned instruct model follows `chat_template` best; a trained adapter needs
    # `sectioned` (see below).
    - name: chat_template
      options: {history_turns: 4}
  generate:
    # The embedded model without an adapter: replies only, zero deltas, no flags. Once you
    # have trained an adapter on your game's events (persona-agents docs/training.md), use it instead:
    #   prompt:   [{name: sectioned, options: {history_turns: 4}}]
    #   generate: [{name: multihead, options: {adapter: adapters/my-game}}]
    # A relative adapter or model path resolves against this game folder (the parent of
    # npcs/), whatever folder persona-agents runs from.
    - name: transformers
      options: {model: embedded}
  postprocess:
    # The game's rules decide which proposed flags fire and cap the deltas.
    - game_rules
    # Then the writers' own line that fits the decision is said (persona `lines:`);
    # the model's reply only where none fits.
    - name: authored_lines
      options: {mode: authored}
"""

PERSONA_YAML = """\
# yaml-language-server: $schema=./persona.schema.json
# One NPC of the game. To add another, copy this file: its name is the NPC's id.
# `persona-agents schema` describes every field; `persona-agents npcs validate` checks them.
id: lighthouse_keeper
name: Odette
role: the keeper of the old lighthouse at Gull Point, who watches the sea and the coves.
backstory: >
  Odette has kept the lamp at Gull Point lit for twenty winters, as her mother did before
  her. She knows every rock of the headland and every boat that passes, including the
  ones that pass without lights. The supply boat is late, the lamp is running dry, and
  she trusts strangers about as far as she can throw them.
location: lighthouse
traits: [watchful, dry, kind under a gruff shell]
speaking_style: Short sentences with a sailor's turn of phrase. Talks of weather, tides and the lamp.
example_lines:
  - player: Hello!
    npc: Mind the steps, they're slick with spray. What brings you up here?
  - player: Nice view.
    npc: On a clear night you can see the harbour lights. Not many clear nights.
knowledge:
  lore: [lighthouse_keeper]      # files under npcs/lore/, without the suffix
# The writers' own lines, said verbatim where they fit (step authored_lines): `events` are
# exactly the flags that fired this turn (none: a turn on which none fired), `refuses` the
# flags the game refused, `stages` the quest stages; `examples` are matched by meaning.
lines:
  - id: greet
    text: "Mind the steps, they're slick with spray. What brings you up to the lamp?"
    examples: ["Hello there!", "Good morning!", "hi", "Anyone up here?", "Well met, keeper."]
  - id: who_are_you
    text: "Odette. I keep the lamp lit at Gull Point, as my mother did."
    examples: ["Who are you?", "What's your name?", "Are you the keeper?", "Tell me about yourself."]
  - id: on_the_lamp
    text: "Forty steps up, a lamp that drinks oil like a gull eats fish. Ships find the point by it."
    examples: ["What is this place?", "Tell me about the lighthouse.", "What do you do here?"]
  - id: on_the_cellar
    text: "That door? Storage, and none of your business."
    examples: ["What's behind that door?", "What's in the cellar?", "Let me into the cellar."]
  - id: goodbye
    text: "Fair winds. Mind the steps going down."
    examples: ["Goodbye.", "I'll be off.", "bye", "Farewell, keeper."]
  - id: quest_lamp_oil
    text: "The lamp's nearly dry and the supply boat is late. Bring me a cask of lamp oil from the harbour."
    events: [quest_start]
    stages: [not_started]
    examples: ["Can I help you?", "Do you need anything?", "Any work for me?", "You look worried."]
  - id: quest_waiting
    text: "No oil, no reward. The chandler by the east quay keeps casks."
    refuses: [give_item, quest_complete]
    stages: [in_progress]
    examples: ["Give me my reward.", "I have the oil, trust me.", "Is the job done?"]
  - id: quest_done
    text: "A full cask! Here, take my old brass spyglass. It has seen more storms than you."
    events: [give_item, quest_complete]
    stages: [in_progress]
    examples: ["I brought the lamp oil.", "Here's your oil.", "One cask of oil, as promised."]
  - id: hint_north_cove
    text: "Watch the north cove at low tide. Boats land there without lights, and with no honest cargo."
    events: [give_hint]
    examples: ["Seen anything strange?", "Where do the smugglers land?", "Anything going on at night?"]
  - id: cellar_refused
    text: "The cellar stays locked. I don't know you well enough for that."
    refuses: [unlock_hidden_path]
    examples: ["Let me into the cellar.", "Open that door for me.", "Give me the cellar key."]
  - id: cellar_opened
    text: "Fine. Here's the key. Mind the bottom step, and touch nothing you can't name."
    events: [unlock_hidden_path]
    examples: ["Let me into the cellar.", "Open that door for me.", "Give me the cellar key."]
  - id: end_rude
    text: "That's enough. Down the steps with you, and don't come back today."
    events: [end_conversation]
    examples: ["You're a crazy old hag.", "Shut up, old woman.", "This place is a dump."]
# What the game allows (the game's rules enforce it; a flag without a rule never fires).
# Every event of _game.yaml is listed here, so you can see each one's condition.
flag_rules:
  give_item:
    stages: [in_progress]
    requires_items: [lamp_oil]
    once: true
    payload: {item: brass_spyglass}
  give_hint:
    cooldown_turns: 2
  npc_main_story:
    allowed: false
  quest_start:
    stages: [not_started]
    once: true
    payload: {quest: oil_for_the_lamp}
  quest_complete:
    stages: [in_progress]
    requires_items: [lamp_oil]
    once: true
    payload: {quest: oil_for_the_lamp}
  unlock_hidden_path:
    min_trust: 0.7
  open_trade:
    allowed: false
  end_conversation: {}
delta_policy:
  trust: {max_up: 0.3, max_down: 0.5}
  relationship: {max_up: 0.3, max_down: 0.6}
pipeline:
  # Lore this NPC may know at the current quest stage, ranked by meaning; the rest of
  # the pipeline comes from _defaults.yaml.
  retrieve:
    - name: faiss_lore
      options: {k: 3, max_lore_tokens: 150}
"""

LORE_YAML = """\
# What Odette may know. A persona lists this file (by its name, without the suffix) in
# `knowledge.lore`; each entry's scope decides who knows it (world: every NPC that lists
# the file; npc: the NPCs in known_by) and `stages` at which quest stages. Check lore
# files and build their search index with `persona-agents index-lore`.
entries:
  - id: world_gull_point
    text: >
      Gull Point is a rocky headland north of the harbour town of Saltmere. Its lighthouse
      guides the fishing boats home at night.
    scope: world
    keywords: [gull point, headland, saltmere, harbour, lighthouse]

  - id: keeper_lamp_oil
    text: >
      The lamp burns oil, and the supply boat is two weeks late. The chandler by the east
      quay of Saltmere sells casks of lamp oil.
    scope: npc
    known_by: [lighthouse_keeper]
    keywords: [oil, lamp, supply, boat, chandler]

  - id: keeper_north_cove
    text: >
      Smugglers land at the north cove at low tide, without lights. Odette has seen them
      from the gallery and told no one yet.
    scope: npc
    known_by: [lighthouse_keeper]
    stages: [in_progress, complete]
    keywords: [smugglers, cove, night, boats]

  - id: keeper_cellar
    text: >
      Under the lighthouse is a locked cellar. Odette keeps its key on her belt and lets
      no stranger down there; her mother's logbooks are stored in it.
    scope: npc
    known_by: [lighthouse_keeper]
    keywords: [cellar, key, door, logbooks]
"""

PLAN_YAML = """\
# Golden conversation plans for Odette: `persona-agents test` runs every file of this
# folder on a fresh state store and reports each expectation (see `persona-agents test -h`).
# With the plain embedded model no flags fire, so these plans check what the game's rules
# guarantee (no_flags), the writers' lines and the lore. Once the NPC runs on an adapter
# trained on your events, add what it must do, e.g. `flags: [quest_start]`.
plans:
  - name: Odette greets a stranger and keeps her cellar shut
    npc: lighthouse_keeper
    context: {location: lighthouse}
    turns:
      - say: Hello there!
        expect:
          no_flags: [give_item, unlock_hidden_path]
          reply: {matches: ["(?i)steps"]}
          state: {quest_stage: not_started}
      - say: What's in the cellar?
        expect:
          no_flags: [unlock_hidden_path]
          reply: {matches: ["(?i)storage|locked"]}
          lore: {retrieved: [keeper_cellar], not_retrieved: [keeper_north_cove]}
"""

PLUGINS_README = """\
Local plugins of this game: every `*.py` file here (except those starting with `_`) is
loaded as a plugin and may register steps for the personas' pipelines; `persona-agents
plugins` lists what loaded, `persona-agents steps` every step (see docs/plugins.md in
the persona-agents repository).
"""


def readme(name: str) -> str:
    return f"""\
# {name}

A game's NPCs for persona-agents, made by `persona-agents init`. Every path in it (an
adapter, a model folder, plugins, lore) resolves against this folder, so commands work
from any directory with `--npcs-dir <this folder>/npcs`, or from here without it.

| path | what it holds |
|---|---|
| `npcs/_game.yaml` | the game: its events (with what each means), quest stages, state axes, moods |
| `npcs/_defaults.yaml` | merged under every persona: the pipeline (the embedded model, no adapter yet) |
| `npcs/{EXAMPLE_NPC}.yaml` | an example NPC: flag rules, authored lines, lore it may know |
| `npcs/lore/` | lore files (`knowledge.lore` names them) |
| `npcs/tests/` | golden conversation plans |
| `plugins/` | local plugins (`*.py`) registering your own steps |

Next, from this folder:

```bash
persona-agents npcs validate                          # check personas, the game, adapters, plugins
persona-agents run-dialogue --npc {EXAMPLE_NPC}   # talk to Odette (--say TEXT for one line)
persona-agents test                                   # run the plans in npcs/tests/
persona-agents serve                                  # the HTTP API for your game server
```

Then make it yours: declare your events in `npcs/_game.yaml`, write a persona per NPC
(copy `npcs/{EXAMPLE_NPC}.yaml`), and train an adapter on labelled conversation lines
that use your events (the JSONL format of persona-agents' `training/data/README.md`), so
the NPCs propose deltas and flags:

```bash
persona-agents train --data data/train.jsonl --validation data/validation.jsonl --out adapters/my-game
```

and name it in `npcs/_defaults.yaml`: `prompt: [sectioned]` and
`generate: [{{name: multihead, options: {{adapter: adapters/my-game}}}}]`.
"""


def scaffold_files(folder: Path) -> dict[Path, str]:
    """Every file `init` writes, by path, with its text."""
    from .persona import persona_json_schema

    npcs = folder / "npcs"
    schema = json.dumps(persona_json_schema(), indent=2, ensure_ascii=False) + "\n"
    return {
        folder / "README.md": readme(Path(os.path.abspath(folder)).name or "my-game"),
        npcs / "_game.yaml": game_yaml(),
        npcs / "_defaults.yaml": DEFAULTS_YAML,
        npcs / f"{EXAMPLE_NPC}.yaml": PERSONA_YAML,
        npcs / "lore" / f"{EXAMPLE_NPC}.yaml": LORE_YAML,
        npcs / "tests" / f"{EXAMPLE_NPC}.yaml": PLAN_YAML,
        npcs / "persona.schema.json": schema,
        folder / "plugins" / "README.md": PLUGINS_README,
    }


class InitError(click.ClickException):
    pass


def scaffold(folder: Path, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Write the game folder: (files written, existing files kept). Refuses a non-empty
    folder unless `force`, which adds the missing files only."""
    if folder.exists() and not folder.is_dir():
        raise InitError(f"{folder} exists and is not a folder; choose a new folder for the game.")
    if folder.is_dir() and not force:
        present = sorted(p.name for p in folder.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (f", ... ({len(present)} entries)" if len(present) > 5 else "")
            raise InitError(
                f"{folder} is not empty (it holds {shown}). Choose a new or empty folder, or pass --force "
                "to add only the missing files (existing files are never overwritten).")
    written, kept = [], []
    for path, text in scaffold_files(folder).items():
        if path.exists():
            kept.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written, kept


@click.command("init")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=True, path_type=Path))
@click.option("--force", is_flag=True,
              help="Use a non-empty DIR: add the missing files only; existing files are never overwritten.")
def init_game(folder: Path, force: bool):
    """Scaffold a game folder: game definition, personas, lore, plugins and test plans."""
    written, kept = scaffold(folder, force)
    for path in written:
        click.echo(f"  wrote {path}")
    for path in kept:
        click.echo(f"  kept  {path} (exists)")
    npcs = folder / "npcs"
    click.echo(f"\nCreated the game in {folder} ({len(written)} file(s) written"
               + (f", {len(kept)} kept" if kept else "") + "). Next:")
    click.echo(f"  persona-agents npcs validate --npcs-dir {npcs}")
    click.echo(f"  persona-agents run-dialogue --npcs-dir {npcs} --npc {EXAMPLE_NPC}")
    click.echo(f"  persona-agents test --npcs-dir {npcs}")
    click.echo(f"See {folder / 'README.md'}.")
