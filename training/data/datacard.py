"""Statistics and the data card (README.md) of the fine-tuning dataset.

Used by build_dataset.py; every figure in the README is computed from the build itself.
"""
from collections import Counter, defaultdict

TRAINING = ("train", "validation")    # the files the delta / band / length figures describe


def turns_of(convs):
    return [t for conv in convs for t in conv]


DELTA_BINS = (("<= -0.50", -9, -0.495), ("-0.49 .. -0.20", -0.495, -0.195),
              ("-0.19 .. -0.03", -0.195, -0.025), ("-0.02 .. +0.02", -0.025, 0.025),
              ("+0.03 .. +0.09", 0.025, 0.095), ("+0.10 .. +0.19", 0.095, 0.195),
              (">= +0.20", 0.195, 9))


def stats(splits, npc_keys):
    s = {"files": {}, "npc": defaultdict(Counter), "flag": defaultdict(Counter),
         "noflag": Counter(), "total": Counter(), "convs": Counter(),
         "delta_t": Counter(), "delta_r": Counter(), "labels": Counter(),
         "turns_per_conv": Counter(), "band_of_intent": defaultdict(Counter),
         "said": defaultdict(set)}
    for name, convs in splits.items():
        turns = turns_of(convs)
        s["files"][name] = (len(convs), len(turns))
        for conv in convs:
            if name in TRAINING:
                s["turns_per_conv"][len(conv)] += 1
        for record, meta in turns:
            s["said"][name].add(record["player_utterance"])
            s["npc"][meta["npc"]][name] += 1
            s["total"][name] += 1
            if not record["flag"]:
                s["noflag"][name] += 1
            for f in record["flag"]:
                s["flag"][f][name] += 1
            if isinstance(record["tags"]["relationship"], str):
                s["labels"][name] += 1
            if name in TRAINING:
                for key, value in (("delta_t", record["delta"][0]), ("delta_r", record["delta"][1])):
                    for label, lo, hi in DELTA_BINS:
                        if lo < value <= hi:
                            s[key][label] += 1
                s["band_of_intent"][meta["intent"]][meta["band"]] += 1
    return s


def print_stats(s, npc_keys, flag_order):
    names = list(s["files"])
    print("file                       conversations  examples  no-flag")
    for n in names:
        c, e = s["files"][n]
        print(f"  {n:25s} {c:13d} {e:9d}  {s['noflag'][n] / e:6.1%}")
    print("per NPC:    " + "  ".join(f"{n[:10]:>10s}" for n in names))
    for key in npc_keys:
        print(f"  {key:9s} " + "  ".join(f"{s['npc'][key][n]:10d}" for n in names))
    print("per flag (positives):")
    for f in flag_order:
        print(f"  {f:19s} " + "  ".join(f"{s['flag'][f][n]:10d}" for n in names))
    tv = s["total"]["train"] + s["total"]["validation"]
    print(f"validation share of train+validation examples: {s['total']['validation'] / tv:.1%}")


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pool_sizes(common, npcs, npc_keys):
    """Smallest and largest pool sizes: player phrasings per intent, replies per branch;
    and the set of all 'fresh' player phrasings."""
    sizes = {("player", kind): [] for kind in ("main", "heldout", "fresh")}
    sizes.update({("reply", kind): [] for kind in ("main", "heldout")})
    n_intents, n_branches, fresh = set(), 0, set()
    for key in npc_keys:
        player = dict(common)
        player.update(npcs[key]["player"])
        for intent, pool in player.items():
            n_intents.add(intent)
            fresh.update(pool["fresh"])
            for kind in ("main", "heldout", "fresh"):
                sizes[("player", kind)].append(len(pool[kind]))
        for pool in npcs[key]["reply"].values():
            n_branches += 1
            for kind in ("main", "heldout"):
                sizes[("reply", kind)].append(len(pool[kind]))
    fmt = {k: f"{min(v)}-{max(v)}" if min(v) != max(v) else str(min(v)) for k, v in sizes.items()}
    return fmt, len(n_intents), n_branches, fresh


def write_readme(path, s, common, npcs, npc_keys, flag_order, band_ranges):
    names = ["train", "validation", "heldout_paraphrased", "heldout_fresh"]
    sizes, n_intents, n_branches, fresh = pool_sizes(common, npcs, npc_keys)
    tv = s["total"]["train"] + s["total"]["validation"]
    file_rows = [[f"`{n}.jsonl`", s["files"][n][0], s["files"][n][1],
                  f"{s['noflag'][n] / s['files'][n][1]:.1%}",
                  f"{s['labels'][n] / s['files'][n][1]:.1%}"] for n in names]
    npc_ids = {"brann": "blacksmith_village_center (Brann)", "hale": "guard_city_gate (Captain Hale)",
               "silvia": "mother_abandoned_factory (Silvia)", "pip": "merchant_traveling (Pip)",
               "maren": "hermit_forest (Old Maren)", "dorian": "uncle_hideout (Dorian)"}
    npc_rows = [[f"`{npc_ids[k].split()[0]}` {npc_ids[k].split(' ', 1)[1]}"] +
                [s["npc"][k][n] for n in names] for k in npc_keys]
    flag_rows = [[f"`{f}`"] + [s["flag"][f][n] for n in names] +
                 [s["flag"][f]["train"] + s["flag"][f]["validation"]] for f in flag_order]
    noflag_tv = s["noflag"]["train"] + s["noflag"]["validation"]
    delta_rows = [[label, s["delta_t"][label], s["delta_r"][label]] for label, _, _ in DELTA_BINS]
    intent_rows = []
    for intent in sorted(s["band_of_intent"]):
        bands = s["band_of_intent"][intent]
        intent_rows.append([f"`{intent}`", ", ".join(f"{b} ({c})" for b, c in sorted(bands.items()))])
    band_rows = [["neutral", "one of 0, +-0.01, +0.02", "one of 0, +-0.01, +0.02"]]
    for band, ((t_lo, t_hi), (r_lo, r_hi)) in ((b, r) for b, r in band_ranges.items() if r):
        band_rows.append([band, f"{t_lo:+.2f} .. {t_hi:+.2f}", f"{r_lo:+.2f} .. {r_hi:+.2f}"])
    band_rows.sort(key=lambda row: row[0] != "neutral")
    tpc = ", ".join(f"{k} turns: {v}" for k, v in sorted(s["turns_per_conv"].items()))
    text = README_TEMPLATE.format(
        files=md_table(["file", "conversations", "examples", "no-flag turns",
                        "relationship as label"], file_rows),
        npcs=md_table(["NPC"] + names, npc_rows),
        flags=md_table(["flag"] + names + ["train+validation"], flag_rows),
        noflag=f"{noflag_tv / tv:.1%}", tv=tv, val_share=f"{s['total']['validation'] / tv:.1%}",
        deltas=md_table(["delta value", "trust change", "relationship change"], delta_rows),
        bands=md_table(["intent", "delta band (turns)"], intent_rows),
        band_table=md_table(["band", "trust change", "relationship change"], band_rows),
        tpc=tpc, n_intents=n_intents, n_branches=n_branches,
        p_main=sizes[("player", "main")], p_held=sizes[("player", "heldout")],
        r_main=sizes[("reply", "main")], r_held=sizes[("reply", "heldout")],
        p_fresh=sizes[("player", "fresh")], n_fresh=len(fresh),
        fresh_said=len(fresh & s["said"]["heldout_fresh"]),
    )
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


README_TEMPLATE = """# Fine-tuning data: the six NPCs of Ashford

Generated by `build_dataset.py` from the hand-written material in `src/`. Do not edit the
JSONL files or this card by hand: change `src/*.json` or the script and regenerate.

```
python training/data/build_dataset.py     # writes the four JSONL files and this README
python training/data/check_dataset.py     # asserts the acceptance criteria, rebuilds in a
                                          # temporary folder and compares sha256
```

The build is deterministic (stdlib only, seeded `random.Random` streams: 1234 for
`SCENARIOS`, 1235 for `OPENINGS`, 1236 for `COVERAGE`, 1237 for `heldout_fresh.jsonl`, 1238
for `COVERAGE_FIRST_LINES`):
running it again gives byte-identical files.

## Files

{files}

- `train.jsonl` / `validation.jsonl`: split **by conversation** (every turn of a
  conversation is in the same file), stratified by NPC and scenario so every flag and
  every near-miss situation appears in validation. Validation holds {val_share} of the
  {tv} train+validation examples.
- `heldout_paraphrased.jsonl`: the same six NPCs, scenarios and labelling rules, but every
  player utterance and every NPC reply comes from separate `heldout` pools that the
  train/validation files never use (`check_dataset.py` asserts the pools are disjoint).
  Use it to check that a figure measured on validation is not bound to the exact wording.
- `heldout_fresh.jsonl`: the larger unseen-wording set, for judging and ranking adapters
  (flag prediction) on player lines worded as no other file words them. **Never train,
  calibrate thresholds or select checkpoints on it**, or it stops measuring that. Its
  player lines come only from a third pool per player intent, `fresh` ({p_fresh}
  phrasings per intent, {n_fresh} in all), written apart from the `main` and `heldout`
  pools and checked disjoint from both (also up to case, punctuation and word order);
  every one of them is said at least once ({fresh_said} of {n_fresh}). The same six NPCs,
  scenarios (`SCENARIOS` and `OPENINGS`, in proportion to each scenario's `main` count)
  and labelling rules, on a fourth random stream. Its NPC replies reuse the `heldout`
  reply pools: the replies are not what it measures, and its reply LM loss is not
  independent of `heldout_paraphrased.jsonl`'s.

Conversation ids: `brann-0001` ... for train/validation, `brann-p001` ... for the
paraphrased set, `brann-f001` ... for the fresh set. Conversations have 2 to 6 turns, or
one where the player's first line ends the talk (train+validation: {tpc}).

## Record format

One JSON object per line, UTF-8:

```json
{{"conversation_id": "brann-0042", "npc_id": "blacksmith_village_center",
 "tags": {{"location": "village_square", "quest_stage": "not_started", "relationship": 0.1,
          "trust": 0.35, "npc_mood": "gruff", "player_reputation": "unknown"}},
 "context": [{{"role": "player", "text": "..."}}, {{"role": "npc", "text": "..."}}],
 "player_utterance": "...", "response": "...",
 "delta": [0.0, 0.01], "flag": ["quest_start"],
 "player_state": {{"items": ["broken_sword"], "actions": ["show_item:broken_sword"]}},
 "game_state": {{"time_of_day": "day"}}}}
```

- `tags` are the state **before** the turn; `delta` is `[trust_change,
  relationship_change]` caused by the turn; the next turn's tags are the previous tags
  plus the delta (clamped to trust [0, 1], relationship [-1, 1], rounded to 2 decimals),
  and the quest stage / items / mood move with the turn's events (after `quest_start` the
  stage is `in_progress`, after Brann's `quest_complete` it is `complete`, a given item
  appears in `items`, an item handed over disappears).
- `context` holds the earlier turns of the same conversation (empty on the first turn).
- `tags.relationship` is a number in [-1, 1] in about 90% of records and a label in the
  rest (as in the seed). The labels cut at the same points the rules use: `enemy` < -0.5
  <= `rival` < -0.2 <= `stranger` < 0.2 <= `acquaintance` < 0.5 <= `friend` < 0.8 <=
  `close_friend`. Records where Pip decides on the map are always numeric.
- `tags.quest_stage` is the NPC's own quest (`repair_sword` for Brann, `find_jason` for
  Silvia); for Hale, Pip, Maren and Dorian, who have no quest of their own, it carries the
  main quest `find_jason`. The game marks `find_jason` complete once the player holds
  `jasons_letter` (Dorian hands it over), which is when Silvia can complete it.
- `player_state.actions` lists earlier player actions (`woke_in_ruins`,
  `talked_to_silvia`, `visited_collapsed_mine`, ...) and, on a turn where the player
  really shows or hands over an item, `show_item:<item_id>`. A player who only *claims* an
  item gets no `show_item` action (and the item is not in `items`).
- `flag` uses the vocabulary of the labelling rulebook (`docs/labeling.md`), in its order:
  give_item, give_hint, npc_main_story, quest_start, quest_complete, unlock_hidden_path,
  open_trade, end_conversation.

## How it was made

Scripted composition from hand-written pools, not model generation.

1. `src/common.json` holds player phrasings shared by all NPCs (greetings, weather,
   courtesy, jokes, rudeness, insults, threats, bribes, questions about Jason);
   `src/<npc>.json` holds each NPC's own player intents and every reply, in the NPC's
   voice (Brann gruff and direct, Hale strict and dutiful, Silvia grieving, Pip a chatty
   gossip, Maren riddling and wry, Dorian wary). {n_intents} player intents and
   {n_branches} reply branches over the six NPCs. Each pool has a `main` list ({p_main}
   player phrasings per intent, {r_main} replies per reply branch) and a separate
   `heldout` list ({p_held} player phrasings, {r_held} replies); each player intent has a
   third list, `fresh` ({p_fresh} phrasings), used by `heldout_fresh.jsonl` alone.
2. Each NPC has scenarios in `scenarios.py` (`SCENARIOS`): an initial state range
   (quest stage, trust, relationship, items) and a sequence of player intents with
   optional steps. Near-miss scenarios put the same request under different conditions:
   Brann asked to repair with and without the sword, handed ore with and without ore in
   `items`; Hale asked to open with a pass, with trust >= 0.6, with trust just under 0.6
   (0.52-0.59), or shown a pass that is not there; Pip asked for the map at relationship
   above and just under 0.5; Silvia told "Jason is alive" at stage `complete` with the
   letter and at `in_progress` without it; Maren's riddle answered right and wrong;
   Dorian asked about Jason just under and over trust 0.5, or before and after the
   player shows Jason's ID card or the party photo. `OPENINGS` adds conversations whose
   first line is the decisive one (a threat, Brann insulted, Hale bribed or shown the
   pass) and Silvia given word of Jason after another first line; they are composed with
   their own random stream, so the `SCENARIOS` conversations did not change. `COVERAGE`
   adds, to train only, one conversation for every `main` phrasing of the decisive lines
   that random draws had left out (Hale bribed, Dorian threatened, Pip asked for the map
   above and under relationship 0.5, Dorian asked for the letter, Silvia given word of
   Jason), on a third stream; validation and held-out did not change. The fresh file is
   composed on a fourth stream from the same `SCENARIOS` and `OPENINGS` (each draw
   preferring the fresh phrasings said least so far, then one conversation more for each
   phrasing still unsaid); none of the other files changed. `COVERAGE_FIRST_LINES` adds, to
   train only and last (its own fifth stream), one two-turn conversation for every `main`
   phrasing of three decisive first lines at states where the game allows the event: Hale
   shown the pass, Pip asked for the map by a friend (relationship 0.52-0.9), Dorian asked
   about Jason by a player he trusts (0.52-0.9); no earlier record changed.
3. For every turn, the NPC's rule function in `build_dataset.py` (`brann()`, `hale()`,
   ...) reads only the game state (tags, items, and what happened earlier in the
   conversation) and returns the reply branch, the flags and the delta band. The reply text is drawn from that
   branch's pool; the delta is drawn uniformly inside the band (`docs/labeling.md`) and rounded.

### The rules (labels obey them exactly; `check_dataset.py` asserts the starred ones)

- **Brann**: `open_trade` when asked to buy or sell. Asked to repair at `not_started`
  while `broken_sword` is in items: `quest_start` (bring iron ore); without the sword: no
  flag. Asked where ore is, or asked to repair at `in_progress` without ore: `give_hint`
  (the collapsed mine east of town). (*) `give_item` (`repaired_sword`) +
  `quest_complete` only when `iron_ore` is in items and the quest is `in_progress`; a
  player who claims ore without it gets an obvious-lie delta and `give_hint` (where ore
  is). About Jason: `give_hint` (ask his mother at the factory). Insults always end the
  talk.
- **Hale**: (*) `unlock_hidden_path` (the upper district) only with `city_pass` in items
  or trust >= 0.6. Otherwise refuses with `give_hint` (passes from the town clerk at the
  town hall, curfew at the evening bell), and refuses without a flag if he has already
  told them in this conversation. Showing a pass that is not in items: obvious lie, no
  flag. Asked about passes or the curfew: `give_hint`. Bribes and threats: large trust
  loss and `end_conversation`.
- **Silvia**: offer to help at `not_started`: `quest_start` (find_jason); at
  `in_progress`: no flag. Asked about Jason's last night: `npc_main_story`. Asked where
  to look / about family: `give_hint` (her brother's hideout under the old mill) at
  `in_progress`, guarded and no flag at `not_started`. (*) Word of Jason at stage
  `complete` with `jasons_letter` in items: `quest_complete` + `give_item`
  (`gold_necklace`); she never gives the necklace before stage `complete`, and "he's
  alive" without the letter at `in_progress` is an unproven claim (lie band, no flag).
  Shown the party photo: evidence band, no flag.
- **Pip**: `open_trade`; asked for gossip or about Jason: `give_hint` (a cloaked man at
  the old mill at night). (*) `give_item` (`map_fragment`) only with numeric relationship
  >= 0.5; below, he teases and refuses (no flag). Gossip told to him raises relationship
  (+0.12..+0.25), which can cross 0.5 within a conversation.
- **Maren**: asked the way (or about Jason): a riddle pointing to the old mill,
  `give_hint`. Asked for the hidden path: she poses the shadow riddle (no flag).
  (*) `unlock_hidden_path` (the hidden grove) only when the answer is "a shadow" (in many
  phrasings); wrong answers get no flag. Asked about the factory fire or the tunnels:
  `npc_main_story`.
- **Dorian**: (*) with trust >= 0.5, asked about Jason or who hunts him:
  `npc_main_story`; asked for something for Silvia: `give_item` (`jasons_letter`). Below
  0.5 he deflects (no flag). Shown Jason's ID card or the party photo: evidence band
  (+0.12..+0.25 trust). A threat ends the talk with a large loss (about -0.6..-0.8 trust,
  -0.5..-0.7 relationship).
- **Everyone**: a threat always ends the talk (`end_conversation`). Rude, insulting or
  bribing words end it when the NPC is pushed too far: relationship below -0.2 before the
  turn (Brann ends on any insult, Hale on any bribe). Small talk, questions about the
  town, the weather or the NPC's life: no flag, delta within +-0.02.

## Counts

### Per NPC (examples)

{npcs}

### Per flag (positive examples)

{flags}

Share of turns with no flag in train+validation: **{noflag}**.

### Delta distribution (train+validation)

{deltas}

### Delta band per intent (train+validation)

One intent maps to one band except where the game state changes the event (for example
`give_ore` is `finish` with ore in items and `lie` without; `return_with_letter` is
`finish` at stage complete and `lie` at in_progress).

{bands}

The bands (deltas are drawn uniformly inside them and rounded to 2 decimals):

{band_table}

## Limits

- Synthetic and small: the pools repeat, so a model can memorise phrasings; the
  paraphrased and fresh sets exist to measure how much. Replies do not quote the exact
  player words.
- The fresh phrasings were written by hand to mean exactly their intent; like every pool
  they are one writer's idea of how players talk, not logs of real players.
- The world facts follow the sample world (`docs/world.md`) and the lore in `npcs/lore/`; ids of
  NPCs, items, quests and places are used exactly as written there.
"""
