#!/usr/bin/env python3
"""Build the persona-agents fine-tuning dataset for the six sample NPCs of Ashford.

Modules beside it: scenarios.py (initial states and intent sequences), datacard.py
(statistics and README.md). Writes, beside this script (or under --out):
  train.jsonl, validation.jsonl   conversations composed from the 'main' phrasing pools,
                                  split by conversation (~18% of examples to validation),
                                  then the COVERAGE and COVERAGE_FIRST_LINES conversations
                                  (train only)
  heldout_paraphrased.jsonl       the same NPCs and situations, composed only from the
                                  separate 'heldout' phrasing pools (different words)
  heldout_fresh.jsonl             the same NPCs and situations again, larger: player lines
                                  only from the third, 'fresh' pools (words no other file
                                  uses), replies from the 'heldout' pools; for judging
                                  adapters on unseen wordings, never for training
  README.md                       the data card, with the counts of this build

How it works: every conversation follows a scenario (a sequence of player intents, some
optional) from an initial game state. For each turn, the NPC's rules below decide the
outcome from the game state alone (tags and player_state, as labeling.md requires):
which reply branch, which flags, which delta band. Text comes from hand-written pools in
src/*.json. The state then moves by the turn's delta and effects (trust, relationship,
quest stage, items, mood), so later turns of a conversation see the updated tags.

Deterministic: stdlib only, seeded random.Random streams (SCENARIOS, OPENINGS, COVERAGE,
FRESH and COVERAGE_FIRST_LINES each have their own, so adding one changed no earlier
record); running it twice gives identical files. Usage: python training/data/build_dataset.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:          # the sibling modules, also when imported from elsewhere
    sys.path.insert(0, HERE)

import datacard  # noqa: E402
from scenarios import (  # noqa: E402
    BACKGROUND_ACTIONS,
    BACKGROUND_ITEMS,
    COVERAGE,
    COVERAGE_FIRST_LINES,
    DONE,
    IP,
    NS,
    OPENINGS,
    SCENARIOS,
    TIMES,
)

SRC_DIR = os.path.join(HERE, "src")
SEED = 1234
OPENINGS_SEED = 1235      # the openings' own stream: adding them changed no earlier record
COVERAGE_SEED = 1236      # the coverage stream's own, for the same reason
FRESH_SEED = 1237         # heldout_fresh.jsonl's own stream, for the same reason
FIRST_LINES_SEED = 1238   # COVERAGE_FIRST_LINES's own, composed after the fresh file
FRESH_SHARE = 0.25        # fresh conversations per scenario: this share of its `main` count
FRESH_REPLIES = "heldout"  # the fresh file's replies (only its player lines are new words)

NPC_KEYS = ("brann", "hale", "silvia", "pip", "maren", "dorian")
FLAG_ORDER = ("give_item", "give_hint", "npc_main_story", "quest_start",
              "quest_complete", "unlock_hidden_path", "open_trade", "end_conversation")
ITEM_ORDER = ("photo_forgotten_party", "jasons_id_card", "broken_sword", "iron_ore",
              "repaired_sword", "city_pass", "map_fragment", "jasons_letter",
              "gold_necklace")

VAL_SHARE = 0.18          # share of examples per scenario group that go to validation
LABEL_SHARE = 0.10        # share of records whose relationship tag is written as a label
PUSHED_TOO_FAR = -0.2     # relationship below which any rude/insulting/bribing turn ends the talk
HALE_GATE_TRUST = 0.6     # Hale opens the gate without a pass from this trust
DORIAN_TRUST = 0.5        # Dorian tells the truth and hands the letter from this trust
PIP_MAP_RELATIONSHIP = 0.5  # Pip gives the map fragment from this relationship

# Delta bands (labeling.md). Each is (trust range, relationship range); "neutral" draws
# from small fixed values within +-0.02. One intent always maps to one band.
NEUTRAL_VALUES = (0.0, 0.0, 0.0, 0.0, 0.01, 0.01, -0.01, 0.02)
BANDS = {
    "neutral": None,
    "polite": ((0.03, 0.08), (0.04, 0.10)),     # polite, empathetic, thanks, apology
    "joke": ((0.00, 0.02), (0.05, 0.10)),       # warm joke: relationship more than trust
    "solve": ((0.05, 0.10), (0.05, 0.10)),      # answering Maren's riddle right
    "share": ((0.03, 0.08), (0.12, 0.25)),      # sharing gossip with Pip (real help to him)
    "evidence": ((0.12, 0.25), (0.03, 0.10)),   # showing evidence: trust more than warmth
    "finish": ((0.20, 0.40), (0.20, 0.40)),     # finishing the NPC's own quest
    "rude": ((-0.15, -0.05), (-0.15, -0.05)),
    "insult": ((-0.35, -0.20), (-0.50, -0.25)),
    "lie": ((-0.35, -0.20), (-0.10, -0.03)),    # obvious lie: claims an item not held
    "bribe": ((-0.45, -0.25), (-0.15, -0.05)),  # polite bribe: trust falls more
    "threat": ((-0.95, -0.55), (-0.95, -0.55)),
    "threat_dorian": ((-0.80, -0.60), (-0.70, -0.50)),
}

END = ["end_conversation"]


# ---------------------------------------------------------------------------------------
# State and outcomes
# ---------------------------------------------------------------------------------------
class State:
    def __init__(self, trust, rel, stage, items, actions, mood):
        self.trust, self.rel, self.stage = trust, rel, stage
        self.items, self.actions, self.mood = list(items), list(actions), mood
        self.memo = set()       # facts of this conversation: riddle_posed, gate_hinted, ...

    def has(self, item):
        return item in self.items


class Outcome:
    """What the NPC does this turn, decided from the state before the turn."""

    def __init__(self, branch, flags=(), band="neutral", add=(), remove=(), stage=None,
                 memo=(), mood=None, shows=None, numeric_rel=False):
        self.branch, self.flags, self.band = branch, list(flags), band
        self.add, self.remove, self.stage = list(add), list(remove), stage
        self.memo, self.mood, self.shows = set(memo), mood, shows
        self.numeric_rel = numeric_rel


def generic(key, intent, st):
    """Small talk, courtesy and hostility: the same rules for every NPC."""
    simple = {"greet": "greet", "weather": "weather", "ask_town": "town", "ask_life": "life"}
    if intent in simple:
        return Outcome(simple[intent])
    if intent in ("kind", "thanks", "apologize"):
        return Outcome(intent, band="polite")
    if intent == "joke":
        return Outcome("joke", band="joke")
    pushed = st.rel < PUSHED_TOO_FAR
    if intent == "rude":
        return Outcome("rude_end" if pushed else "rude", END if pushed else [], "rude", mood="angry")
    if intent == "insult":
        end = key == "brann" or pushed              # Brann serves no one who insults him
        return Outcome("insult_end" if end else "insult", END if end else [], "insult", mood="angry")
    if intent == "bribe":
        end = key == "hale" or pushed               # a bribe insults Hale's office
        return Outcome("bribe_end" if end else "bribe", END if end else [], "bribe", mood="angry")
    if intent == "threat":                          # every NPC ends the talk on a threat
        band = "threat_dorian" if key == "dorian" else "threat"
        return Outcome("threat_end", END, band, mood="angry")
    raise ValueError(f"{key}: no rule for intent {intent!r}")


def brann(intent, st):
    # A job taken in this very conversation gets its own replies ("took you long enough"
    # would not fit).
    branch = "repair_done_now" if "job_taken" in st.memo else "repair_done"
    done = Outcome(branch, ["give_item", "quest_complete"], "finish",
                   add=["repaired_sword"], remove=["iron_ore", "broken_sword"], stage=DONE,
                   mood="pleased", shows="iron_ore")
    if intent == "ask_jason":
        return Outcome("jason_hint", ["give_hint"])
    if intent == "ask_trade":
        return Outcome("trade", ["open_trade"])
    if intent == "ask_ore_location":
        return Outcome("ore_hint", ["give_hint"])
    if intent == "ask_repair":
        if st.stage == NS:
            if st.has("broken_sword"):
                return Outcome("repair_start", ["quest_start"], stage=IP, shows="broken_sword",
                               memo=["job_taken"])
            return Outcome("repair_nosword")
        if st.stage == IP:
            if st.has("iron_ore"):
                return done
            return Outcome("repair_need_ore", ["give_hint"], shows="broken_sword")
        return Outcome("repair_already")
    if intent == "give_ore":
        if st.stage != IP:
            raise ValueError("brann: give_ore is only scheduled with repair_sword in progress")
        if st.has("iron_ore"):
            return done
        return Outcome("ore_claim_false", ["give_hint"], "lie")
    if intent == "thanks" and st.stage == DONE:
        return Outcome("thanks_done", band="polite")
    return generic("brann", intent, st)


def hale(intent, st):
    if intent == "ask_pass_through":
        if st.has("city_pass"):
            return Outcome("gate_open_pass", ["unlock_hidden_path"], mood="pleased")
        if st.trust >= HALE_GATE_TRUST:
            return Outcome("gate_open", ["unlock_hidden_path"], mood="pleased")
        if "gate_hinted" in st.memo:               # already told this conversation
            return Outcome("gate_refuse_again")
        return Outcome("gate_refuse_hint", ["give_hint"], memo=["gate_hinted"])
    if intent == "show_pass":
        if st.has("city_pass"):
            return Outcome("gate_open_pass", ["unlock_hidden_path"], "evidence",
                           mood="pleased", shows="city_pass")
        return Outcome("pass_claim_false", [], "lie")
    if intent == "ask_where_pass":
        return Outcome("pass_hint", ["give_hint"], memo=["gate_hinted"])
    if intent == "ask_curfew":
        return Outcome("curfew_hint", ["give_hint"])
    if intent == "ask_jason":
        return Outcome("jason_deflect")
    return generic("hale", intent, st)


def silvia(intent, st):
    if intent == "offer_help":
        if st.stage == NS:
            return Outcome("quest_start", ["quest_start"], "polite", stage=IP, mood="pleased")
        if st.stage == IP:
            return Outcome("help_already", [], "polite")
    if intent == "ask_last_night":
        return Outcome("story", ["npc_main_story"])
    if intent == "ask_where_look":
        if st.stage == IP:
            return Outcome("brother_hint", ["give_hint"])
        if st.stage == NS:
            return Outcome("brother_guarded")
    if intent == "return_with_letter":
        # The game marks find_jason complete once the player holds Jason's letter; she
        # rewards only then, and only once.
        if st.stage == DONE and st.has("jasons_letter") and not st.has("gold_necklace"):
            return Outcome("quest_done", ["give_item", "quest_complete"], "finish",
                           add=["gold_necklace"], remove=["jasons_letter"],
                           mood="grateful", shows="jasons_letter")
        if st.stage == IP and not st.has("jasons_letter"):
            return Outcome("claim_unproven", [], "lie")
    if intent == "show_photo" and st.has("photo_forgotten_party"):
        return Outcome("photo_seen", [], "evidence", shows="photo_forgotten_party")
    if intent == "thanks" and st.has("gold_necklace"):
        return Outcome("thanks_after", band="polite")
    if intent in ("offer_help", "ask_where_look", "return_with_letter", "show_photo"):
        raise ValueError(f"silvia: {intent} not scheduled at stage {st.stage}")
    return generic("silvia", intent, st)


def pip(intent, st):
    if intent == "ask_trade":
        return Outcome("trade", ["open_trade"])
    if intent in ("ask_gossip", "ask_jason"):
        return Outcome("gossip_hint", ["give_hint"])
    if intent == "share_gossip":
        return Outcome("share_gossip", [], "share")
    if intent == "ask_map":
        if st.rel >= PIP_MAP_RELATIONSHIP and not st.has("map_fragment"):
            return Outcome("map_give", ["give_item"], add=["map_fragment"], mood="pleased",
                           numeric_rel=True)
        return Outcome("map_tease", numeric_rel=True)
    return generic("pip", intent, st)


def maren(intent, st):
    if intent in ("ask_way", "ask_jason"):
        return Outcome("riddle_hint", ["give_hint"])
    if intent == "ask_grove":
        return Outcome("pose_riddle", memo=["riddle_posed"])
    if intent in ("answer_correct", "answer_wrong"):
        if "riddle_posed" not in st.memo:
            raise ValueError("maren: an answer is only scheduled after the riddle")
        if intent == "answer_correct":
            return Outcome("riddle_solved", ["unlock_hidden_path"], "solve", mood="pleased",
                           memo=["grove_open"])
        return Outcome("riddle_wrong")
    if intent == "ask_fire":
        return Outcome("fire_story", ["npc_main_story"])
    if intent == "ask_tunnels":
        return Outcome("tunnels_story", ["npc_main_story"])
    return generic("maren", intent, st)


def dorian(intent, st):
    trusted = st.trust >= DORIAN_TRUST
    if intent == "ask_jason":
        return Outcome("reveal", ["npc_main_story"]) if trusted else Outcome("deflect")
    if intent == "ask_smugglers":
        return Outcome("smugglers_reveal", ["npc_main_story"]) if trusted else Outcome("deflect")
    if intent == "ask_letter":
        if trusted and not st.has("jasons_letter"):
            # Holding Jason's letter is the word of Jason that completes find_jason.
            return Outcome("letter_give", ["give_item"], add=["jasons_letter"], stage=DONE,
                           mood="pleased")
        return Outcome("letter_refuse")
    if intent == "show_id" and st.has("jasons_id_card"):
        return Outcome("evidence_id", [], "evidence", shows="jasons_id_card")
    if intent == "show_photo" and st.has("photo_forgotten_party"):
        return Outcome("evidence_photo", [], "evidence", shows="photo_forgotten_party")
    if intent == "mention_silvia":
        return Outcome("silvia_mention", [], "polite")
    if intent in ("show_id", "show_photo"):
        raise ValueError(f"dorian: {intent} scheduled without the item")
    return generic("dorian", intent, st)


RULES = {"brann": brann, "hale": hale, "silvia": silvia, "pip": pip, "maren": maren,
         "dorian": dorian}

REL_LABELS = ((-0.5, "enemy"), (-0.2, "rival"), (0.2, "stranger"), (0.5, "acquaintance"),
              (0.8, "friend"))


def rel_label(r):
    """Label form of a relationship; the cut points match the numeric rules (0.5, -0.2)."""
    for upper, label in REL_LABELS:
        if r < upper:
            return label
    return "close_friend"


# ---------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------
def load_sources():
    with open(os.path.join(SRC_DIR, "common.json"), encoding="utf-8") as f:
        common = json.load(f)["player"]
    npcs = {}
    for key in NPC_KEYS:
        with open(os.path.join(SRC_DIR, f"{key}.json"), encoding="utf-8") as f:
            npcs[key] = json.load(f)
    return common, npcs


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.uniform(0, total)
    for value, w in pairs:
        x -= w
        if x <= 0:
            return value
    return pairs[-1][0]


def expand(seq, rng):
    out = []
    for el in seq:
        if isinstance(el, str):
            out.append(el)
        elif isinstance(el, list):
            out.extend(expand(el, rng))
        elif el[0] == "?":
            if rng.random() < el[1]:
                out.extend(expand([el[2]], rng))
        elif el[0] == "|":
            out.extend(expand([rng.choice(el[1])], rng))
        elif el[0] == "k":
            out.extend(rng.sample(el[3], rng.randint(el[1], el[2])))
        else:
            raise ValueError(f"bad sequence element {el!r}")
    return out


def r2(x):
    return round(x, 2) + 0.0          # + 0.0 turns -0.0 into 0.0


def draw_delta(rng, band):
    if band == "neutral":
        return [r2(rng.choice(NEUTRAL_VALUES)), r2(rng.choice(NEUTRAL_VALUES))]
    (t_lo, t_hi), (r_lo, r_hi) = BANDS[band]
    return [r2(rng.uniform(t_lo, t_hi)), r2(rng.uniform(r_lo, r_hi))]


def sort_items(items):
    return sorted(set(items), key=ITEM_ORDER.index)


class Composer:
    def __init__(self, rng, common, npcs, replies=None):
        self.rng, self.common, self.npcs = rng, common, npcs
        self.forced = None        # (intent, phrasing) the next conversations must say
        self.replies = replies    # the reply pool; None: the same pool as the player lines
        self.said = None          # Counter of player lines said so far: prefer the least said

    def player_pool(self, key, intent, pool):
        src = self.npcs[key]["player"].get(intent) or self.common[intent]
        return src[pool]

    def reply_pool(self, key, branch, pool):
        return self.npcs[key]["reply"][branch][pool]

    def pick(self, options, used):
        unused = [o for o in options if o not in used] or options
        if self.said is not None:         # only the fresh stream: spread over its phrasings
            least = min(self.said[o] for o in unused)
            unused = [o for o in unused if self.said[o] == least]
        choice = self.rng.choice(unused)
        used.add(choice)
        return choice

    def init_state(self, key, scen):
        rng = self.rng
        stage = scen["stage"] if isinstance(scen["stage"], str) else weighted(rng, scen["stage"])
        trust = r2(rng.uniform(*scen["trust"]))
        rel = r2(rng.uniform(*scen["rel"]))
        items = list(scen["items"])
        for item, p in BACKGROUND_ITEMS[key]:
            if rng.random() < p:
                items.append(item)
        actions = list(scen["actions"])
        if rng.random() < 0.5:
            actions.insert(0, "woke_in_ruins")
        if rng.random() < 0.3:
            actions.append(rng.choice(BACKGROUND_ACTIONS[1:]))
        moods = self.npcs[key]["moods"]
        mood = moods["angry"] if scen["hostile"] and rel < 0 and rng.random() < 0.5 \
            else rng.choice(moods["start"])
        st = State(trust, rel, stage, sort_items(items), list(dict.fromkeys(actions)), mood)
        if scen["hostile"]:
            rep = rng.choice(["unknown", "troublemaker", "suspicious"])
        elif trust < 0.25:
            rep = rng.choice(["unknown", "unknown", "suspicious"])
        elif trust < 0.55:
            rep = rng.choice(["unknown", "helpful"])
        else:
            rep = rng.choice(["helpful", "trusted"])
        return st, rep, weighted(rng, TIMES)

    def conversation(self, key, scen, pool, conv_id):
        """One conversation: a list of (record, meta) pairs, 2 to 6 turns (1 if it ended at once)."""
        for _ in range(100):
            turns = self._try_conversation(key, scen, pool, conv_id)
            if 2 <= len(turns) <= 6 or ended_at_once(turns):
                return turns
        raise RuntimeError(f"{key}/{scen['name']}: cannot compose a 2-6 turn conversation")

    def _try_conversation(self, key, scen, pool, conv_id):
        rng, npc = self.rng, self.npcs[key]
        st, reputation, time_of_day = self.init_state(key, scen)
        intents = expand(scen["seq"], rng)
        context, used, turns = [], set(), []
        for intent in intents:
            out = RULES[key](intent, st)
            if self.forced and self.forced[0] == intent and self.forced[1] not in used:
                utterance = self.forced[1]
                used.add(utterance)
            else:
                utterance = self.pick(self.player_pool(key, intent, pool), used)
            reply = self.pick(self.reply_pool(key, out.branch, self.replies or pool), used)
            delta = draw_delta(rng, out.band)
            flags = [f for f in FLAG_ORDER if f in out.flags]
            as_label = (not out.numeric_rel) and rng.random() < LABEL_SHARE
            actions = list(st.actions) + ([f"show_item:{out.shows}"] if out.shows else [])
            record = {
                "conversation_id": conv_id,
                "npc_id": npc["npc_id"],
                "tags": {
                    "location": npc["location"],
                    "quest_stage": st.stage,
                    "relationship": rel_label(st.rel) if as_label else st.rel,
                    "trust": st.trust,
                    "npc_mood": st.mood,
                    "player_reputation": reputation,
                },
                "context": [dict(turn) for turn in context],
                "player_utterance": utterance,
                "response": reply,
                "delta": delta,
                "flag": flags,
                "player_state": {"items": list(st.items), "actions": actions},
                "game_state": {"time_of_day": time_of_day},
            }
            meta = {"npc": key, "scenario": scen["name"], "intent": intent,
                    "branch": out.branch, "band": out.band}
            turns.append((record, meta))
            context += [{"role": "player", "text": utterance}, {"role": "npc", "text": reply}]
            # The turn's consequences, seen by the next turn.
            st.trust = r2(min(1.0, max(0.0, st.trust + delta[0])))
            st.rel = r2(min(1.0, max(-1.0, st.rel + delta[1])))
            st.items = sort_items([i for i in st.items if i not in out.remove] + out.add)
            if out.stage:
                st.stage = out.stage
            st.memo |= out.memo
            if out.mood:
                st.mood = npc["moods"][out.mood]
            if "end_conversation" in flags:
                break
        return turns


def split_by_conversation(rng, convs):
    """Per (npc, scenario) group, send whole conversations to validation until ~18%."""
    groups = defaultdict(list)
    for conv in convs:
        groups[(conv[0][1]["npc"], conv[0][1]["scenario"])].append(conv)
    val_ids = set()
    for gkey in sorted(groups, key=lambda k: (NPC_KEYS.index(k[0]), k[1])):
        group = list(groups[gkey])
        rng.shuffle(group)
        target = VAL_SHARE * sum(len(c) for c in group)
        taken = 0
        for conv in group:
            if taken + 0.6 * len(conv) <= target:
                val_ids.add(conv[0][0]["conversation_id"])
                taken += len(conv)
    train = [c for c in convs if c[0][0]["conversation_id"] not in val_ids]
    val = [c for c in convs if c[0][0]["conversation_id"] in val_ids]
    return train, val


def ended_at_once(turns):
    """A one-turn conversation is allowed only where the player's first line ended it."""
    return len(turns) == 1 and "end_conversation" in turns[0][0]["flag"]


def compose(rng, common, npcs, scenarios, numbers):
    """Main-pool conversations split into train / validation, and held-out conversations.

    `numbers` counts conversations per NPC and pool across calls, so ids stay unique."""
    comp = Composer(rng, common, npcs)
    main, heldout = [], []
    for key in NPC_KEYS:
        for scen in scenarios.get(key, ()):
            for _ in range(scen["main"]):
                numbers[key, "main"] += 1
                main.append(comp.conversation(key, scen, "main", f"{key}-{numbers[key, 'main']:04d}"))
    train, val = split_by_conversation(rng, main)
    for key in NPC_KEYS:
        for scen in scenarios.get(key, ()):
            for _ in range(scen["heldout"]):
                numbers[key, "heldout"] += 1
                heldout.append(comp.conversation(key, scen, "heldout",
                                                 f"{key}-p{numbers[key, 'heldout']:03d}"))
    return train, val, heldout


def cover(rng, common, npcs, scenarios, numbers):
    """Train-only conversations: one per 'main' phrasing of each scenario's `cover` intent."""
    comp = Composer(rng, common, npcs)
    train = []
    for key in NPC_KEYS:
        for scen in scenarios.get(key, ()):
            for line in comp.player_pool(key, scen["cover"], "main"):
                numbers[key, "main"] += 1
                comp.forced = (scen["cover"], line)
                conv = comp.conversation(key, scen, "main", f"{key}-{numbers[key, 'main']:04d}")
                if not any(record["player_utterance"] == line for record, _ in conv):
                    raise RuntimeError(f"{key}/{scen['name']}: the cover intent "
                                       f"{scen['cover']!r} must not be optional")
                train.append(conv)
    return train


def scheduled(seq):
    """Every intent a scenario sequence can schedule (optional steps included)."""
    out = set()
    for el in seq:
        if isinstance(el, str):
            out.add(el)
        elif isinstance(el, list):
            out |= scheduled(el)
        elif el[0] == "?":
            out |= scheduled([el[2]])
        elif el[0] == "|":
            out |= scheduled(el[1])
        elif el[0] == "k":
            out |= set(el[3])
    return out


def fresh(rng, common, npcs, numbers):
    """heldout_fresh.jsonl: player lines only from the 'fresh' pools, replies from 'heldout'.

    FRESH_SHARE of every SCENARIOS and OPENINGS scenario's `main` count (at least one),
    each draw preferring the phrasings said least so far; then, for every fresh phrasing
    still left out, one conversation more that says it (a random scenario of an NPC that
    uses the pool and schedules the intent), so each fresh phrasing is judged at least
    once. Ids `brann-f001` ... in NPC order."""
    comp = Composer(rng, common, npcs, replies=FRESH_REPLIES)
    comp.said = Counter()
    scenarios = {key: SCENARIOS.get(key, []) + OPENINGS.get(key, []) for key in NPC_KEYS}

    def source(key, intent):          # whose pool the NPC's line for this intent comes from
        return key if intent in npcs[key]["player"] else "common"

    def named(key, conv):
        numbers[key, "fresh"] += 1
        for record, _ in conv:
            record["conversation_id"] = f"{key}-f{numbers[key, 'fresh']:03d}"
            comp.said[record["player_utterance"]] += 1
        return conv

    convs = []
    for key in NPC_KEYS:
        for scen in scenarios[key]:
            for _ in range(max(1, round(FRESH_SHARE * scen["main"]))):
                convs.append(named(key, comp.conversation(key, scen, "fresh", "")))
    said = {(source(meta["npc"], meta["intent"]), meta["intent"], record["player_utterance"])
            for conv in convs for record, meta in conv}
    for src, pools in [("common", common)] + [(key, npcs[key]["player"]) for key in NPC_KEYS]:
        for intent, pool in pools.items():
            places = [(key, scen) for key in NPC_KEYS if source(key, intent) == src
                      for scen in scenarios[key] if intent in scheduled(scen["seq"])]
            for line in pool["fresh"]:
                if (src, intent, line) in said:
                    continue
                if not places:
                    raise RuntimeError(f"{src}/{intent}: no scenario schedules this intent")
                comp.forced = (intent, line)
                for _ in range(200):
                    key, scen = rng.choice(places)
                    conv = comp.conversation(key, scen, "fresh", "")
                    if any(record["player_utterance"] == line for record, _ in conv):
                        break
                else:
                    raise RuntimeError(f"{src}/{intent}: cannot compose a turn saying {line!r}")
                convs.append(named(key, conv))
                said |= {(source(meta["npc"], meta["intent"]), meta["intent"],
                          record["player_utterance"]) for record, meta in conv}
    comp.forced = None
    convs.sort(key=lambda conv: NPC_KEYS.index(conv[0][1]["npc"]))   # stable: ids stay in order
    return convs


def build(common, npcs):
    numbers = Counter()
    train, val, heldout = compose(random.Random(SEED), common, npcs, SCENARIOS, numbers)
    o_train, o_val, o_heldout = compose(random.Random(OPENINGS_SEED), common, npcs, OPENINGS, numbers)
    c_train = cover(random.Random(COVERAGE_SEED), common, npcs, COVERAGE, numbers)
    f_heldout = fresh(random.Random(FRESH_SEED), common, npcs, numbers)
    # Last, so the conversation numbers of every file above stay as they were.
    f_train = cover(random.Random(FIRST_LINES_SEED), common, npcs, COVERAGE_FIRST_LINES, numbers)
    return {"train": train + o_train + c_train + f_train, "validation": val + o_val,
            "heldout_paraphrased": heldout + o_heldout, "heldout_fresh": f_heldout}


# ---------------------------------------------------------------------------------------
# Output and statistics
# ---------------------------------------------------------------------------------------
def write_jsonl(path, convs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for conv in convs:
            for record, _ in conv:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="output folder (default: beside this script)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    common, npcs = load_sources()
    splits = build(common, npcs)
    for name, convs in splits.items():
        write_jsonl(os.path.join(args.out, f"{name}.jsonl"), convs)
    s = datacard.stats(splits, NPC_KEYS)
    datacard.write_readme(os.path.join(args.out, "README.md"), s, common, npcs, NPC_KEYS,
                          FLAG_ORDER, BANDS)
    datacard.print_stats(s, NPC_KEYS, FLAG_ORDER)


if __name__ == "__main__":
    main()
