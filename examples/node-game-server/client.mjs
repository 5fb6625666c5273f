#!/usr/bin/env node
// A game server's side of persona-agents: plays a short scripted conversation through
// the /v1 API (one line streamed as it is generated), then one through the seed
// engine's /ask, printing the NPC's text, deltas and flags.
//
// Node 20+, no dependencies (built-in fetch).
//
//   node client.mjs [--url http://127.0.0.1:8000] [--key KEY] [--npc ID] [--player ID] [--seed N]
//
// --url defaults to $PERSONA_AGENTS_URL, --key to $PERSONA_AGENTS_API_KEY. Exits 1 with
// the server's problem detail when a request fails.

const args = parseArgs(process.argv.slice(2));
const BASE = (args.url ?? process.env.PERSONA_AGENTS_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
const KEY = args.key ?? process.env.PERSONA_AGENTS_API_KEY;
const SEED = args.seed === undefined ? {} : { seed: Number(args.seed) }; // reproducible /v1 replies
const HEADERS = { "content-type": "application/json", ...(KEY ? { authorization: `Bearer ${KEY}` } : {}) };

class ApiError extends Error {
  constructor(status, problem) {
    super(`HTTP ${status} ${problem?.code ?? ""}: ${problem?.detail ?? JSON.stringify(problem)}`);
    this.status = status;
    this.problem = problem;
  }
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const m = argv[i].match(/^--([a-z-]+)(?:=(.*))?$/);
    if (!m) throw new Error(`unexpected argument ${argv[i]}`);
    out[m[1]] = m[2] ?? argv[++i];
  }
  return out;
}

async function call(method, path, body) {
  const res = await fetch(BASE + path, { method, headers: HEADERS, body: body && JSON.stringify(body) });
  const data = await res.json(); // errors are application/problem+json: JSON too
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// POST .../turns/stream: `text` events as the reply is generated, then `final` (or `error`).
async function streamTurn(npcId, body, onText) {
  const res = await fetch(`${BASE}/v1/npcs/${encodeURIComponent(npcId)}/turns/stream`, {
    method: "POST", headers: HEADERS, body: JSON.stringify(body),
  });
  if (!res.ok) throw new ApiError(res.status, await res.json());
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of res.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      const payload = data.length ? JSON.parse(data.join("\n")) : null;
      if (event === "text") onText(payload.text);
      else if (event === "final") return payload;
      else if (event === "error") throw new ApiError(payload.status, payload);
    }
  }
  throw new Error("the stream ended without a final event");
}

const signed = (x) => (x >= 0 ? "+" : "") + x.toFixed(2);

function printOutcome(deltas, flagNames, extra = "") {
  console.log(`     deltas: trust ${signed(deltas.trust)}, relationship ${signed(deltas.relationship)}` +
    ` | flags: ${flagNames.length ? flagNames.join(", ") : "none"}${extra}`);
}

function printTurn(npcName, turn) {
  console.log(`     ${npcName}: ${turn.text || "(no words)"}`);
  printOutcome(turn.deltas, turn.flags.map((f) => f.name + (Object.keys(f.payload).length ? " " + JSON.stringify(f.payload) : "")));
  for (const r of turn.flags_rejected) console.log(`     rejected: ${r.name} (${r.reason})`);
}

async function main() {
  const { npcs } = await call("GET", "/v1/npcs");
  const npc = args.npc ? npcs.find((n) => n.id === args.npc) : npcs[0];
  if (!npc) throw new Error(`no NPC ${args.npc ?? ""} on ${BASE}; served: ${npcs.map((n) => n.id).join(", ")}`);
  const player = args.player ?? `node-demo-${Date.now()}`;
  console.log(`${BASE}: talking to ${npc.name} (${npc.id}) as ${player}`);
  let turns = 0;

  // 1. The /v1 API: the game sends what it knows (quest stage, items) with each line.
  const script = [
    { utterance: "Good morning!" },
    { utterance: "Can you fix my sword?", quest_stage: "in_progress" },
    { utterance: "I brought the iron ore you asked for.", quest_stage: "in_progress", items: ["iron_ore"] },
  ];
  for (const [i, line] of script.entries()) {
    console.log(`[v1] player: ${line.utterance}`);
    const turn = await call("POST", `/v1/npcs/${encodeURIComponent(npc.id)}/turns`,
      { player_id: player, request_id: `${player}-${i}`, ...SEED, ...line });
    printTurn(npc.name, turn);
    turns++;
  }

  // 2. The same conversation, one line streamed: print the pieces as they arrive.
  const line = "What will you do with the rest of the ore?";
  console.log(`[stream] player: ${line}`);
  process.stdout.write(`     ${npc.name}: `);
  let pieces = 0;
  const final = await streamTurn(npc.id, { player_id: player, utterance: line, ...SEED }, (text) => {
    pieces++;
    process.stdout.write(text);
  });
  process.stdout.write("\n");
  printOutcome(final.deltas, final.flags.map((f) => f.name), ` | ${pieces} piece(s) streamed`);
  turns++;

  const state = await call("GET", `/v1/players/${encodeURIComponent(player)}/npcs/${encodeURIComponent(npc.id)}/state`);
  console.log(`[state] trust ${state.state.trust.toFixed(2)}, relationship ${signed(state.state.relationship)}, ` +
    `quest ${state.state.quest_stage}, turns ${state.turns}, flags fired: ` +
    (state.flags_fired.map((f) => `${f.flag}@${f.turn}`).join(", ") || "none"));

  // 3. The seed engine's /ask: a game server written for it works unchanged.
  const session = `${player}-ask`;
  const asks = [
    { user_input: "Hello there.", context: { player_state: { items: [], actions: [] }, game_state: { quest_stage: "not_started" } } },
    {
      user_input: "Here is the iron ore. Can you fix my sword now?",
      context: {
        player_state: { items: ["iron_ore"], actions: ["visited_mine"], position: "forge" },
        game_state: { quest_stage: "in_progress", location: "forge" },
        npc_state: { trust: 0.5, relationship: 0.2, mood: "busy" },
      },
      require: { items: ["iron_ore"] },
      dialogue_history: [{ player: "Hello there.", npc: "..." }],
    },
  ];
  for (const ask of asks) {
    console.log(`[ask] player: ${ask.user_input}`);
    const out = await call("POST", "/ask", { session_id: session, npc_id: npc.id, ...ask });
    console.log(`     ${npc.name}: ${out.npc_output_text || "(no words)"}`);
    const fired = Object.entries(out.flags).filter(([, on]) => on === 1).map(([name]) => name);
    printOutcome(out.deltas, fired, ` | valid: ${out.valid}`);
    turns++;
  }
  console.log(`done: ${turns} turns`);
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
