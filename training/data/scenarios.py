"""Scenarios of the fine-tuning dataset: initial game states and player intent sequences.

Pure data, used by build_dataset.py. Each scenario gives a range for the initial state
(quest stage, trust, relationship, items the player holds, earlier actions) and a sequence
of player intents. The NPC's rules in build_dataset.py decide what each intent leads to.
"""

NS, IP, DONE = "not_started", "in_progress", "complete"

# Sequence elements: "intent"; ("?", p, element) optional; ("|", [elements]) one of;
# ("k", lo, hi, [intents]) lo..hi distinct intents; a list is a sub-sequence.
# main / heldout = number of conversations composed from the main / heldout pools.
def sc(name, main, heldout, seq, stage=IP, trust=(0.25, 0.55), rel=(-0.05, 0.35),
       items=(), actions=(), hostile=False, cover=None):
    return dict(name=name, main=main, heldout=heldout, seq=seq, stage=stage, trust=trust,
                rel=rel, items=list(items), actions=list(actions), hostile=hostile,
                cover=cover)


SMALL = ["weather", "ask_town", "ask_life", "joke", "kind"]
STAGES_ANY = ((NS, 2), (IP, 6), (DONE, 2))      # find_jason stage for NPCs without a quest

G = ("?", .15, "greet")          # an optional greeting opens many conversations


def one_of(*intents):
    return ("|", list(intents))


SCENARIOS = {
    "brann": [
        sc("repair_start", 20, 2, [G, "ask_repair",
                                   one_of("ask_ore_location", "ask_ore_location", "ask_ore_location",
                                          "thanks", "ask_trade"),
                                   ("?", .2, one_of("ask_trade", "thanks"))],
           stage=NS, items=["broken_sword"]),
        sc("start_and_finish", 12, 1, [G, "ask_repair", "give_ore", ("?", .3, one_of("thanks", "ask_trade"))],
           stage=NS, items=["broken_sword", "iron_ore"], actions=["visited_collapsed_mine"]),
        sc("finish", 22, 2, [("?", .35, one_of("greet", "ask_trade")),
                             one_of("give_ore", "give_ore", "ask_repair"),
                             one_of("thanks", "ask_trade", "ask_trade", "ask_jason")],
           items=["broken_sword", "iron_ore"], actions=["visited_collapsed_mine"]),
        sc("ore_claim_false", 9, 1, [G, "give_ore", one_of("apologize", "apologize", "rude", "ask_trade")],
           items=["broken_sword"]),
        sc("need_ore", 9, 1, [G, "ask_repair", one_of("thanks", "ask_trade", "ask_jason")],
           items=["broken_sword"]),
        sc("no_sword", 7, 0, [G, "ask_repair", one_of("ask_trade", "ask_ore_location", "weather")],
           stage=NS),
        sc("already_done", 5, 0, [G, "ask_repair", "ask_trade"], stage=DONE,
           trust=(0.45, 0.8), rel=(0.2, 0.6), items=["repaired_sword"]),
        sc("trade", 18, 1, [G, "ask_trade",
                            one_of("ask_jason", "ask_ore_location", "ask_life", "joke", "thanks")],
           stage=((NS, 1), (IP, 1), (DONE, 1))),
        sc("jason", 7, 0, [G, "ask_jason", one_of("thanks", "ask_trade")], stage=NS),
        sc("long_visit", 8, 0, [G, one_of("weather", "ask_life", "ask_town", "ask_jason"), "ask_repair",
                                "ask_ore_location", one_of("ask_trade", "ask_jason"), ("?", .5, "thanks")],
           stage=NS, items=["broken_sword"]),
        sc("long_return", 6, 0, [G, one_of("ask_life", "weather", "joke"), "ask_trade", "give_ore",
                                 ("?", .6, "thanks")],
           items=["broken_sword", "iron_ore"], actions=["visited_collapsed_mine"]),
        sc("insult", 9, 1, [one_of("greet", "ask_trade", "ask_trade", "ask_jason"), ("?", .4, "rude"), "insult"],
           stage=NS, hostile=True),
        sc("threat", 5, 0, [one_of("greet", "ask_trade"), "threat"], stage=NS, hostile=True),
        sc("pushed", 5, 0, [one_of("greet", "ask_trade"), "rude"], stage=NS, rel=(-0.6, -0.25),
           trust=(0.1, 0.3), hostile=True),
    ],
    "hale": [
        sc("pass_shown", 14, 2, [one_of("greet", "ask_curfew", "ask_curfew", "ask_life"),
                                 one_of("show_pass", "show_pass", "ask_pass_through"), ("?", .2, "thanks")],
           stage=STAGES_ANY, trust=(0.2, 0.58), items=["city_pass"]),
        sc("trusted", 14, 1, [one_of("greet", "ask_curfew", "weather", "kind"), "ask_pass_through",
                              ("?", .2, "thanks")],
           stage=STAGES_ANY, trust=(0.6, 0.88), rel=(0.2, 0.6)),
        sc("refused", 14, 1, [G, "ask_pass_through",
                              one_of("ask_pass_through", "ask_curfew", "ask_curfew", "thanks", "rude")],
           stage=STAGES_ANY, trust=(0.1, 0.57)),
        sc("boundary", 9, 1, ["kind", "ask_pass_through", ("?", .4, "ask_curfew")],
           stage=STAGES_ANY, trust=(0.52, 0.59)),
        sc("pass_claim_false", 9, 1, [G, "show_pass", ("?", .4, "apologize"), "ask_where_pass"],
           stage=STAGES_ANY, trust=(0.2, 0.55)),
        sc("info", 14, 1, [G, ("k", 2, 2, ["ask_curfew", "ask_where_pass"]), ("?", .15, "thanks")],
           stage=STAGES_ANY),
        sc("bribe", 11, 1, [one_of("greet", "ask_pass_through", "ask_pass_through"), ("?", .2, "kind"),
                            "bribe"],
           stage=STAGES_ANY, trust=(0.2, 0.57), hostile=True),
        sc("threat", 6, 1, [one_of("greet", "ask_pass_through"), "threat"],
           stage=STAGES_ANY, trust=(0.15, 0.5), hostile=True),
        sc("long_visit", 8, 0, [G, one_of("ask_life", "weather"), "ask_pass_through", "ask_curfew",
                                ("?", .6, "kind"), ("?", .5, "ask_pass_through")],
           stage=STAGES_ANY, trust=(0.2, 0.5)),
        sc("small_talk", 5, 0, ["greet", ("k", 1, 2, SMALL)], stage=STAGES_ANY),
        sc("jason", 5, 0, [G, "ask_jason", "ask_where_pass"], stage=STAGES_ANY),
        sc("rude_then_insult", 5, 0, [one_of("greet", "ask_curfew"), "rude", "insult", ("?", .6, "insult")],
           stage=STAGES_ANY, rel=(-0.1, 0.15), hostile=True),
        sc("pushed", 5, 0, [one_of("greet", "ask_pass_through"), one_of("rude", "insult")],
           stage=STAGES_ANY, rel=(-0.6, -0.25), trust=(0.1, 0.3), hostile=True),
    ],
    "silvia": [
        sc("quest_start", 20, 2, [G, ("?", .3, "kind"), "offer_help",
                                  one_of("ask_where_look", "ask_where_look", "ask_where_look",
                                         "ask_last_night", "thanks")],
           stage=NS, trust=(0.1, 0.4), rel=(-0.1, 0.3)),
        sc("story", 16, 1, [G, ("?", .3, "kind"), "ask_last_night",
                            one_of("offer_help", "offer_help", "ask_where_look", "thanks")],
           stage=((NS, 1), (IP, 1)), trust=(0.15, 0.5)),
        sc("hint", 14, 1, [one_of("greet", "ask_last_night", "ask_last_night", "kind"), "ask_where_look",
                           ("?", .2, "thanks")],
           trust=(0.3, 0.6), rel=(0.1, 0.45), actions=["talked_to_silvia"]),
        sc("guarded_then_start", 9, 1, ["ask_where_look", "offer_help", ("?", .8, "ask_where_look")],
           stage=NS, trust=(0.1, 0.35)),
        sc("complete", 28, 2, [G, "return_with_letter", one_of("thanks", "thanks", "ask_last_night")],
           stage=DONE, trust=(0.4, 0.8), rel=(0.2, 0.7), items=["jasons_letter"],
           actions=["talked_to_silvia", "visited_old_mill"]),
        sc("claim_unproven", 9, 1, [G, "return_with_letter",
                                    one_of("apologize", "ask_where_look", "ask_where_look")],
           trust=(0.25, 0.55), actions=["talked_to_silvia"]),
        sc("photo", 8, 1, [G, "show_photo", one_of("ask_last_night", "ask_last_night", "offer_help")],
           stage=((NS, 1), (IP, 1)), items=["photo_forgotten_party"]),
        sc("long_visit", 8, 0, [G, "kind", "ask_last_night", "offer_help", "ask_where_look",
                                ("?", .5, "thanks")],
           stage=NS, trust=(0.1, 0.4), rel=(-0.1, 0.3)),
        sc("small_talk", 5, 0, ["greet", ("k", 1, 2, SMALL)], stage=((NS, 1), (IP, 1))),
        sc("insult", 7, 1, [one_of("greet", "kind", "ask_last_night", "ask_last_night"), ("?", .4, "rude"), "insult",
                            ("?", .6, "insult")],
           stage=((NS, 1), (IP, 1)), rel=(-0.1, 0.15), hostile=True),
        sc("threat", 5, 0, [one_of("greet", "ask_last_night"), "threat"], stage=((NS, 1), (IP, 1)),
           hostile=True),
        sc("pushed", 4, 0, [one_of("greet", "ask_last_night"), one_of("rude", "insult")],
           stage=((NS, 1), (IP, 1)), rel=(-0.6, -0.25), trust=(0.05, 0.3), hostile=True),
    ],
    "pip": [
        sc("trade", 20, 1, [G, "ask_trade",
                            one_of("ask_gossip", "ask_gossip", "joke", "thanks", "ask_life", "ask_map")],
           stage=STAGES_ANY),
        sc("gossip", 18, 2, [G, one_of("ask_gossip", "ask_gossip", "ask_jason"),
                             one_of("ask_trade", "thanks", "share_gossip")], stage=STAGES_ANY),
        sc("map_friend", 14, 2, [G, ("?", .25, "joke"), "ask_map", one_of("ask_trade", "ask_gossip", "thanks")],
           stage=STAGES_ANY, rel=(0.5, 0.85), trust=(0.35, 0.75)),
        sc("map_stranger", 8, 1, [G, "ask_map", one_of("ask_trade", "ask_gossip")],
           stage=STAGES_ANY, rel=(-0.1, 0.35)),
        sc("map_earned", 10, 1, ["share_gossip", ("?", .4, "joke"), "ask_map", ("?", .3, "ask_trade")],
           stage=STAGES_ANY, rel=(0.3, 0.45)),
        sc("map_boundary", 5, 0, [G, "ask_map", one_of("ask_gossip", "ask_trade")],
           stage=STAGES_ANY, rel=(0.42, 0.49)),
        sc("long_visit", 8, 1, [G, "ask_trade", "share_gossip", one_of("joke", "kind"), "ask_map",
                                ("?", .5, "ask_gossip")],
           stage=STAGES_ANY, rel=(0.15, 0.4)),
        sc("small_talk", 5, 1, ["greet", ("k", 1, 2, SMALL + ["share_gossip"])], stage=STAGES_ANY),
        sc("insult", 6, 1, [one_of("greet", "ask_trade", "ask_gossip"), ("?", .4, "rude"), "insult", ("?", .6,
            "insult")],
           stage=STAGES_ANY, rel=(-0.1, 0.15), hostile=True),
        sc("threat", 4, 0, [one_of("greet", "ask_trade"), "threat"], stage=STAGES_ANY, hostile=True),
        sc("pushed", 4, 0, [one_of("greet", "ask_trade"), one_of("rude", "insult")], stage=STAGES_ANY,
           rel=(-0.6, -0.25), trust=(0.1, 0.3), hostile=True),
    ],
    "maren": [
        sc("riddle_solved", 18, 2, [G, "ask_grove", "answer_correct",
                                    ("?", .4, one_of("ask_fire", "ask_way", "thanks"))],
           stage=STAGES_ANY),
        sc("wrong_then_right", 11, 1, [("?", .2, "greet"), "ask_grove", "answer_wrong", "answer_correct"],
           stage=STAGES_ANY),
        sc("riddle_failed", 7, 1, [G, "ask_grove", "answer_wrong",
                                   ("?", .7, one_of("answer_wrong", "ask_way", "ask_way"))],
           stage=STAGES_ANY),
        sc("way_hint", 16, 1, [G, one_of("ask_way", "ask_way", "ask_jason"),
                               one_of("thanks", "ask_fire", "ask_tunnels")], stage=STAGES_ANY),
        sc("fire", 18, 2, [G, "ask_fire", one_of("ask_tunnels", "ask_tunnels", "ask_way", "thanks")],
           stage=STAGES_ANY),
        sc("tunnels", 8, 1, [G, "ask_tunnels", one_of("ask_way", "ask_fire")], stage=STAGES_ANY),
        sc("long_visit", 8, 0, [G, "ask_fire", "ask_tunnels", "ask_grove", ("?", .5, "answer_wrong"),
                                "answer_correct"], stage=STAGES_ANY),
        sc("small_talk", 5, 0, ["greet", ("k", 1, 2, SMALL)], stage=STAGES_ANY),
        sc("insult", 6, 0, [one_of("greet", "ask_fire", "ask_way"), ("?", .4, "rude"), "insult", ("?", .6, "insult")],
           stage=STAGES_ANY, rel=(-0.1, 0.15), hostile=True),
        sc("threat", 4, 1, [one_of("greet", "ask_grove"), "threat"], stage=STAGES_ANY, hostile=True),
        sc("pushed", 4, 0, [one_of("greet", "ask_way"), one_of("rude", "insult")], stage=STAGES_ANY,
           rel=(-0.6, -0.25), trust=(0.1, 0.3), hostile=True),
    ],
    "dorian": [
        sc("trusted", 16, 2, [G, "ask_jason", one_of("ask_letter", "ask_letter", "ask_letter", "ask_smugglers"),
                              ("?", .25, "thanks")],
           trust=(0.52, 0.8), rel=(0.0, 0.4), actions=["talked_to_silvia"]),
        sc("letter_first", 10, 1, [("?", .4, "mention_silvia"), "ask_letter",
                                  one_of("ask_smugglers", "ask_smugglers", "thanks")],
           trust=(0.55, 0.8), rel=(0.0, 0.4), actions=["talked_to_silvia"]),
        sc("earn_trust", 12, 1, ["ask_jason", one_of("show_id", "show_photo"), "ask_jason",
                                 ("?", .7, "ask_letter")],
           trust=(0.3, 0.45), items=["jasons_id_card", "photo_forgotten_party"],
           actions=["talked_to_silvia"]),
        sc("distrusted", 10, 1, [G, "ask_jason", one_of("ask_letter", "ask_smugglers", "mention_silvia")],
           trust=(0.05, 0.45), rel=(-0.2, 0.2)),
        sc("boundary", 6, 1, ["mention_silvia", "ask_jason", ("?", .6, "ask_letter")],
           trust=(0.44, 0.49), actions=["talked_to_silvia"]),
        sc("smugglers", 10, 1, [G, "ask_jason", "ask_smugglers"], trust=(0.5, 0.8),
           actions=["talked_to_silvia"]),
        sc("threat", 10, 1, [one_of("greet", "ask_jason", "ask_jason"), ("?", .25, "rude"), "threat"],
           trust=(0.1, 0.6), hostile=True),
        sc("bribe", 6, 1, ["ask_jason", "bribe", ("?", .5, "ask_letter")], trust=(0.15, 0.45),
           hostile=True),
        sc("insult", 5, 0, [one_of("greet", "ask_jason"), "insult", ("?", .6, "insult")],
           rel=(-0.1, 0.15), hostile=True),
        sc("pushed", 4, 0, [one_of("greet", "ask_jason"), one_of("rude", "insult")], rel=(-0.6, -0.25),
           trust=(0.05, 0.3), hostile=True),
        sc("long_visit", 8, 0, [G, "ask_jason", "mention_silvia", one_of("show_id", "show_photo"),
                                "ask_jason", ("?", .7, "ask_letter")],
           trust=(0.25, 0.4), items=["jasons_id_card", "photo_forgotten_party"]),
        sc("small_talk", 5, 0, ["greet", ("k", 1, 2, ["weather", "ask_life", "ask_town", "kind"])]),
    ],
}


# Openings: the decisive line is the player's first, with nothing before it. Players often
# open with a threat, a bribe or a pass held out, but every scenario above puts a turn before
# those, so a model trained on them alone had never seen such a line on an empty history
# (a first-line threat to Dorian ended the talk with p 0.01). A conversation that its first
# line ends has one turn. build_dataset.py composes these with their own random stream, so
# adding them left every conversation above byte-identical.
OPENINGS = {
    "brann": [
        sc("threat_open", 4, 1, ["threat"], stage=NS, hostile=True),
        sc("insult_open", 4, 1, ["insult"], stage=NS, hostile=True),
    ],
    "hale": [
        sc("pass_open", 10, 1, [one_of("show_pass", "show_pass", "ask_pass_through"), ("?", .4, "thanks")],
           stage=STAGES_ANY, trust=(0.2, 0.58), items=["city_pass"]),
        sc("bribe_open", 6, 1, ["bribe"], stage=STAGES_ANY, trust=(0.2, 0.57), hostile=True),
        sc("threat_open", 4, 1, ["threat"], stage=STAGES_ANY, trust=(0.15, 0.5), hostile=True),
    ],
    "silvia": [
        # The word of Jason after some other first line (the stage moved while they talked).
        sc("complete_late", 8, 1, [one_of("kind", "ask_last_night", "weather", "ask_life"),
                                   "return_with_letter"],
           stage=DONE, trust=(0.4, 0.8), rel=(0.2, 0.7), items=["jasons_letter"],
           actions=["talked_to_silvia", "visited_old_mill"]),
        sc("threat_open", 4, 1, ["threat"], stage=((NS, 1), (IP, 1)), hostile=True),
    ],
    "pip": [
        sc("threat_open", 4, 1, ["threat"], stage=STAGES_ANY, hostile=True),
    ],
    "maren": [
        sc("threat_open", 4, 1, ["threat"], stage=STAGES_ANY, hostile=True),
    ],
    "dorian": [
        sc("threat_open", 6, 1, ["threat"], trust=(0.1, 0.6), hostile=True),
    ],
}


# Coverage: one train conversation per 'main' phrasing of the `cover` intent, which the
# scenario must schedule (not optional). Random draws left some phrasings out of train:
# the plans caught Hale bribed with "Here's some silver..." and Dorian threatened with
# "I know where you sleep..." (neither in train) ending the talk with p 0.01. Train only
# (validation and held-out stay as they were, so their figures stay comparable); `main`
# and `heldout` are unused.
COVERAGE = {
    "hale": [
        sc("bribe_cover", 0, 0, ["bribe"], stage=STAGES_ANY, trust=(0.2, 0.57), hostile=True,
           cover="bribe"),
    ],
    "silvia": [
        sc("complete_cover", 0, 0, [one_of("kind", "ask_last_night", "weather", "ask_life"),
                                    "return_with_letter"],
           stage=DONE, trust=(0.4, 0.8), rel=(0.2, 0.7), items=["jasons_letter"],
           actions=["talked_to_silvia", "visited_old_mill"], cover="return_with_letter"),
    ],
    "pip": [
        # The same words either side of the relationship the map needs (0.5).
        sc("map_friend_cover", 0, 0, ["ask_map", one_of("thanks", "ask_trade", "ask_gossip")],
           stage=STAGES_ANY, trust=(0.3, 0.7), rel=(0.55, 0.9), cover="ask_map"),
        sc("map_stranger_cover", 0, 0, ["ask_map", one_of("ask_trade", "ask_gossip", "weather")],
           stage=STAGES_ANY, trust=(0.2, 0.6), rel=(-0.1, 0.42), cover="ask_map"),
    ],
    "dorian": [
        sc("threat_cover", 0, 0, ["threat"], trust=(0.1, 0.7), hostile=True, cover="threat"),
        sc("letter_cover", 0, 0, ["ask_jason", "ask_letter"], trust=(0.55, 0.9),
           rel=(0.0, 0.4), actions=["talked_to_silvia"], cover="ask_letter"),
    ],
}


# First lines, a second coverage round: the decisive line said first, at states where the
# game allows its event, for the plan lines every adapter variant missed at least once
# (Hale's pass shown first: 5 of 1,755 training turns; Pip's map asked first by a friend;
# Dorian asked about Jason first by a player he trusts). One train conversation per 'main'
# phrasing, like COVERAGE, and a second line (every conversation that goes on has 2 to 6
# turns). build_dataset.py composes them last, on their own stream, so every earlier
# record (heldout_fresh.jsonl's ids included) is byte-identical.
COVERAGE_FIRST_LINES = {
    "hale": [
        sc("pass_first_cover", 0, 0, ["show_pass", one_of("thanks", "ask_curfew")],
           stage=STAGES_ANY, trust=(0.1, 0.58), items=["city_pass"], cover="show_pass"),
    ],
    "pip": [
        sc("map_friend_first_cover", 0, 0, ["ask_map", one_of("thanks", "ask_trade", "ask_gossip")],
           stage=STAGES_ANY, trust=(0.3, 0.8), rel=(0.52, 0.9), cover="ask_map"),
    ],
    "dorian": [
        sc("truth_first_cover", 0, 0, ["ask_jason", one_of("ask_letter", "ask_smugglers", "thanks")],
           trust=(0.52, 0.9), rel=(0.0, 0.4), actions=["talked_to_silvia"], cover="ask_jason"),
    ],
}

# Items the player may carry that do not touch this NPC's rules (so labels stay exact).
BACKGROUND_ITEMS = {
    "brann": (("photo_forgotten_party", .6), ("jasons_id_card", .25), ("city_pass", .1),
              ("map_fragment", .1)),
    "hale": (("photo_forgotten_party", .6), ("jasons_id_card", .25), ("broken_sword", .15),
             ("repaired_sword", .1), ("map_fragment", .1)),
    "silvia": (("photo_forgotten_party", .5), ("jasons_id_card", .2), ("broken_sword", .15),
               ("city_pass", .1)),
    "pip": (("photo_forgotten_party", .6), ("jasons_id_card", .25), ("broken_sword", .15),
            ("city_pass", .1)),
    "maren": (("photo_forgotten_party", .6), ("jasons_id_card", .25), ("map_fragment", .35),
              ("broken_sword", .1)),
    "dorian": (("photo_forgotten_party", .5), ("jasons_id_card", .3), ("map_fragment", .1)),
}
BACKGROUND_ACTIONS = ("woke_in_ruins", "visited_crossroads", "visited_village_square",
                      "entered_greywood")
TIMES = (("morning", 25), ("day", 35), ("evening", 25), ("night", 15))
