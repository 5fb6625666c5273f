// The forge: an authored Ink scene around one turn the NPC generates (persona-agents).
// play.mjs runs it with inkjs; docs/cards-and-stories.md has the whole mapping.

// Story -> turn: these VARs go into the turn's game context.
VAR quest_stage = "in_progress"   // the turn's quest_stage
VAR items = "iron_ore"            // the turn's items (names, comma-separated)
VAR actions = ""                  // the turn's actions (names, comma-separated)
VAR location = "village_square"   // the turn's location
VAR visits = 2                    // any other VAR: the turn's game_state (visits=2)

// Turn -> story: the NPC's state after the turn comes back into these.
VAR trust = 0.3
VAR relationship = 0.0
VAR mood = "busy"

// Events are commands the game handles: the story calls them (~ give_item("...")) and a
// generated turn fires them, and both reach the same handler in the game.
EXTERNAL give_item(item)
EXTERNAL end_conversation()

-> forge

=== forge ===
The forge roars. Sparks jump from the anvil.
Brann: You again. Show me what you brought, then. #speaker:brann
* [Hand over the iron ore]
    Here is the iron ore you asked for. Can you mend my sword now? #npc_turn
    -> verdict
* [Buy a dagger for twelve silver]
    Brann: Twelve silver. Good steel, and it'll hold an edge. #speaker:brann
    // An authored event: the same command a generated turn's give_item reaches.
    ~ give_item("dagger")
    You leave the forge with a new dagger.
    -> END
* [Leave]
    -> END

=== verdict ===
// An authored branch that follows from what the generated turn decided: give_item put
// the sword into the player's items.
{ items ? "repaired_sword":
    Brann: Hold it to the light. Not a crack in it. Keep it oiled. #speaker:brann
    You leave the forge with the mended sword on your belt.
- else:
    Brann: No ore, no sword. The mine east of town has what I need. #speaker:brann
    You leave the forge empty-handed.
}
-> END

// Fallbacks for a preview without a game (Inky); the game binds the real commands.
=== function give_item(item) ===
~ items = items + "," + item

=== function end_conversation() ===
~ return
