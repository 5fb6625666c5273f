#!/usr/bin/env node
// An authored Ink story around a generated persona-agents turn (issue 31).
//
// inkjs compiles forge.ink and runs it. Authored lines are printed as they come; a line
// tagged #npc_turn is the player's line to an NPC: it goes to a running
// `persona-agents serve` (POST /v1/npcs/{id}/turns) with the story's variables as the
// turn's game context, and what the turn decides comes back into the story:
//
//   story -> turn   VAR quest_stage, location      -> quest_stage, location
//                   VAR items, actions ("a,b")     -> items, actions (lists)
//                   any other VAR (but the state)  -> game_state {name: value}
//   turn -> story   state.trust, relationship,     -> VAR trust, relationship, mood,
//                   mood, quest_stage                 quest_stage (those declared)
//                   each fired event + payload     -> the game's command of that name,
//                                                     the one the story's EXTERNAL binds
//
// So `~ give_item("map_fragment")` in the story and a turn that fires give_item with
// {item: map_fragment} reach the same command, and the story's next branch reads what
// it changed (here: the player's `items`).
//
// Node 20+, one dependency (inkjs, see package.json; `npm ci` installs it).
//
//   node play.mjs [--url http://127.0.0.1:8000] [--key KEY] [--npc ID] [--player ID]
//                 [--seed N] [--choose N] [--set VAR=VALUE ...] [--story FILE.ink]
//
// --url defaults to $PERSONA_AGENTS_URL, --key to $PERSONA_AGENTS_API_KEY, --npc to
// blacksmith_village_center; --choose picks the Nth choice at every choice (default 1);
// --set changes a VAR before the story starts (items= : the player holds nothing).
// Exits 1 with the server's problem detail when a request fails.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Compiler, Story } from "inkjs/full";

const HERE = dirname(fileURLToPath(import.meta.url));
const args = parseArgs(process.argv.slice(2));
const BASE = (args.url ?? process.env.PERSONA_AGENTS_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
const KEY = args.key ?? process.env.PERSONA_AGENTS_API_KEY;
const NPC = args.npc ?? "blacksmith_village_center";
const PLAYER = args.player ?? `ink-demo-${Date.now()}`;
const CHOICE = Number(args.choose ?? 1);
const HEADERS = { "content-type": "application/json", ...(KEY ? { authorization: `Bearer ${KEY}` } : {}) };

// The mapping between the story's variables and a turn (docs/cards-and-stories.md).
const CONTEXT_VARS = ["quest_stage", "location"]; // story -> the turn's fields of these names
const LIST_VARS = ["items", "actions"]; // story -> the turn's lists ("a,b" -> ["a", "b"])
const STATE_VARS = ["trust", "relationship", "mood", "quest_stage"]; // turn's state -> story

function parseArgs(argv) {
  const out = { set: [] };
  for (let i = 0; i < argv.length; i++) {
    const m = argv[i].match(/^--([a-z-]+)(?:=(.*))?$/);
    if (!m) throw new Error(`unexpected argument ${argv[i]}`);
    const value = m[2] ?? argv[++i];
    if (m[1] === "set") out.set.push(value);
    else out[m[1]] = value;
  }
  return out;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(`HTTP ${status} ${problem?.code ?? ""}: ${problem?.detail ?? JSON.stringify(problem)}`);
  }
}

async function call(method, path, body) {
  const res = await fetch(BASE + path, { method, headers: HEADERS, body: body && JSON.stringify(body) });
  const data = await res.json();
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const list = (text) => String(text ?? "").split(",").map((s) => s.trim()).filter(Boolean);

function literal(text) {
  if (text === "true" || text === "false") return text === "true";
  if (text !== "" && !Number.isNaN(Number(text))) return Number(text);
  return text;
}

// The story's variables as the turn's game context.
function contextOf(story, names) {
  const context = { game_state: {} };
  for (const name of names) {
    const value = story.variablesState[name];
    if (CONTEXT_VARS.includes(name)) {
      if (value !== "") context[name] = value;
    } else if (LIST_VARS.includes(name)) {
      context[name] = list(value);
    } else if (!STATE_VARS.includes(name)) {
      context.game_state[name] = value;
    }
  }
  return context;
}

// The game's commands: the story's EXTERNAL functions and the turns' events alike.
function makeGame(story, names) {
  const handlers = {
    give_item(item) {
      story.variablesState.items = [...list(story.variablesState.items), item].join(",");
      return `items = ${story.variablesState.items}`;
    },
    end_conversation() {
      return "the NPC turns away";
    },
  };
  const game = {
    run(name, values, from) {
      const handler = handlers[name];
      const effect = handler ? handler(...values) : "no command of that name in this game";
      console.log(`  [game] ${name}(${values.join(", ")}) from the ${from}: ${effect}`);
    },
  };
  for (const name of Object.keys(handlers)) {
    story.BindExternalFunction(name, (...values) => game.run(name, values, "story"), false);
  }
  return game;
}

async function generatedTurn(story, names, game, npc, utterance) {
  const context = contextOf(story, names);
  console.log(`You: ${utterance}`);
  console.log(`  [turn] context: quest_stage=${context.quest_stage ?? "-"}, items=${context.items?.join(",") || "-"}, ` +
    `location=${context.location ?? "-"}, game_state=${JSON.stringify(context.game_state)}`);
  const body = { player_id: PLAYER, utterance, ...context };
  if (args.seed !== undefined) body.seed = Number(args.seed);
  const turn = await call("POST", `/v1/npcs/${encodeURIComponent(npc.id)}/turns`, body);
  console.log(`${npc.name} (generated): ${turn.text || "(no words)"}`);
  const events = turn.flags.map((f) => `${f.name} ${JSON.stringify(f.payload)}`).join("; ") || "none";
  const rejected = turn.flags_rejected.map((f) => `${f.name} (${f.reason})`).join("; ") || "none";
  console.log(`  [turn] events: ${events} | rejected: ${rejected} | trust ${turn.state.trust.toFixed(2)}, ` +
    `relationship ${turn.state.relationship.toFixed(2)}, quest ${turn.state.quest_stage}`);
  for (const name of STATE_VARS) {
    if (names.includes(name)) story.variablesState[name] = turn.state[name];
  }
  for (const flag of turn.flags) game.run(flag.name, Object.values(flag.payload), "turn");
}

async function main() {
  const file = args.story ?? join(HERE, "forge.ink");
  const source = readFileSync(file, "utf8");
  const compiler = new Compiler(source);
  const compiled = compiler.Compile();
  if (!compiled || compiler.errors.length) throw new Error(`${file}: ${compiler.errors.join("; ")}`);
  const story = new Story(compiled.ToJson());
  const names = [...source.matchAll(/^\s*VAR\s+(\w+)\s*=/gm)].map((m) => m[1]);
  for (const assignment of args.set) {
    const [name, ...rest] = assignment.split("=");
    if (!names.includes(name)) throw new Error(`--set ${assignment}: the story declares no VAR ${name}`);
    story.variablesState[name] = literal(rest.join("="));
  }
  const game = makeGame(story, names);
  const npc = await call("GET", `/v1/npcs/${encodeURIComponent(NPC)}`);
  console.log(`${BASE}: ${file.split("/").pop()} with ${npc.name} (${npc.id}) as ${PLAYER}`);
  let turns = 0;
  for (;;) {
    while (story.canContinue) {
      const line = story.Continue().trim();
      if (story.currentTags.includes("npc_turn")) {
        await generatedTurn(story, names, game, npc, line);
        turns++;
      } else if (line) {
        console.log(line);
      }
    }
    if (!story.currentChoices.length) break;
    const choice = story.currentChoices[Math.min(CHOICE, story.currentChoices.length) - 1];
    console.log(`> ${choice.text}`);
    story.ChooseChoiceIndex(choice.index);
  }
  console.log(`done: ${turns} generated turn(s); items ${story.variablesState.items || "none"}, ` +
    `trust ${Number(story.variablesState.trust).toFixed(2)}`);
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
