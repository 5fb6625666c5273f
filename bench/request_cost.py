"""What the largest accepted request costs next to an ordinary turn (issue 33), embedded model, loopback.

Target: "The largest request the schema accepts costs at most 2x the time and memory of an
ordinary turn, and an ordinary turn sent alongside it at most 1.5x its usual time."

Starts `persona-agents serve` on the sample NPCs (a temporary SQLite file, no key, no rate
limit) on a free loopback port, waits for /readyz, then in one run:

- probes: the attack of the issue (a game_state value of 12,000 digits, as a JSON string
  and as a JSON number), a body with every schema limit filled, one just under the 64 KiB
  body limit and one over it: each must be refused (413/422) before any model work; prints
  the status and how long the answer took;
- ordinary: `--ordinary` turns of a typical line with a small context (quest stage,
  location, two items, one game_state pair), the same seed and the same line up to one place
  word (the same token count; a line the server has not embedded yet, as a player's would
  be), each from a new player;
- largest: a request that fills every `request_budget` (the persona's; defaults utterance
  128 tokens, each value 24, items 64, actions 64, game_state 96, history 256) to just
  under its limit, counted with the embedded model's tokenizer, for a player whose stored
  history was first filled to its budget by `--history-turns` earlier turns. Two shapes:
  `plain` (ASCII text; lists as many one-token entries, which the prompt joins with
  separators the budget does not count, when that renders longer than a few long ones)
  and `nfkc` (characters that the prompt's marker neutralisation, Unicode NFKC, expands:
  U+FDFA is 3 tokens as sent and 16 in the prompt). Both must be accepted (200);
- memory: the server process's memory (/proc/PID/status, else psutil) sampled every 20 ms
  during each turn; a turn's growth is how far the anonymous part (RssAnon: KV cache,
  activations; not mapped files) rose above its level just before the turn. The history
  turns grow the engine's cache, which is given back when idle, so the first ordinary turn
  allocates its own cache: the figure of a kind of turn is the most any of its turns grew;
- alongside: an ordinary turn from another player sent 0.2 s after a largest turn starts.

Prints `name=value` lines, among them `largest_time_ratio=` (plain largest / ordinary,
medians; the ordinary turn is a player's first, the largest comes at a full stored
history), `largest_request_time_ratio=` (the largest / an ordinary request from a
player whose stored history is full too: what the request itself adds),
`largest_rss_ratio=` (the largest turn's memory growth / the ordinary turn's, the
denominator floored at 1 MB), `alongside_time_ratio=` (ordinary turn alongside a
largest one / its usual time) with their targets, the same for the `nfkc` shape
(`nfkc_*`), the server's CPU seconds per turn (`*_cpu_s`), and the whole-process RSS
idle, after the ordinary turns, after the largest ones and idle again (`rss_mb_*`).
Ratios are measured side by side in one run; on a CPU shared with other work they are
noisy (`loadavg_*` shows it; `--torch-threads 1` avoids the worst of it).

    python bench/request_cost.py [--quick] [--npc ID] [--ordinary 5] [--largest 2] [--alongside 2]
                                 [--history-turns 4] [--shapes plain,nfkc] [--torch-threads N]
                                 [--prefill-chunk N]

`--quick` (a smoke run, well under a minute on 2 cores) plays the plain shape only, with
one history turn, one largest and one alongside turn, and serves with one torch thread
unless `--torch-threads` says otherwise (and OMP_WAIT_POLICY=PASSIVE unless set): its
ratios are rough.

`--torch-threads`: by default the server uses torch's thread count (one per core). On a
CPU that other busy processes share, that count can stall every turn (here an ordinary
turn took 36 s instead of 1.3 s beside one other 2-thread torch process, burning CPU the
whole time); `--torch-threads 1` gives figures that mean something there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_info import git_head, loadavg  # noqa: E402

from tests.server_support import start_cli_server  # noqa: E402


# The default RequestBudget (persona_agents/persona.py); read from the persona below when it sets one.
def _budget_defaults() -> dict[str, int]:
    from persona_agents.persona import RequestBudget

    return RequestBudget().model_dump()


BUDGET_DEFAULTS = _budget_defaults()
UTTERANCE_CHARS = 500  # the sample NPCs' normalize_input.max_chars
NAME_CHARS = 100  # MAX_NAME_CHARS in persona_agents/server/schemas.py (items, actions, location, quest stage)
STATE_VALUE_CHARS = 256  # MAX_STATE_VALUE_CHARS: one game_state value as JSON
MAX_KEYS = 64
MAX_NEW_TOKENS = 48  # the sample NPCs' generation.max_new_tokens: a reply is at most this long
HISTORY_TURNS_SHOWN = 4  # the sectioned prompt step's history_turns in npcs/_defaults.yaml

ORDINARY = {"utterance": "Good morning! Can you fix my sword? The blade snapped on the road.", "seed": 7,
            "quest_stage": "in_progress", "location": "village_square", "items": ["iron_ore", "broken_sword"],
            "game_state": {"weather": "rain"}}
# Each measured ordinary turn says a line the server has not seen (one place word changed,
# the same token count), as players do: a repeated line would find its sentence vector
# cached and skip the embedder's trip to the compute thread.
PLACES = ("road", "mill", "farm", "well", "gate", "bridge", "hill", "pass", "ridge", "shore", "dock", "square",
          "market", "river", "lake", "field", "wood")
_fresh_lines = iter(range(10**6))


def ordinary_request(player: str) -> dict[str, Any]:
    """The ordinary request with a line not said before in this run."""
    n = next(_fresh_lines)
    place = PLACES[n % len(PLACES)] + ("" if n < len(PLACES) else f" {n // len(PLACES)}")
    return {**ORDINARY, "utterance": ORDINARY["utterance"].replace("road", place), "player_id": player}


PLAIN_WORDS = ("the old forge burns hot tonight and iron is scarce since the mine fell so tell me what "
               "a fair blade costs in silver").split()
KEYS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
NFKC_UNITS = ("\ufdfa", "\u00bc")  # 3 tokens -> 16 in the prompt; 1 token -> 4 ("1⁄4")


# -- sizing request values with the embedded tokenizer -------------------------------------------
class Sizer:
    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from persona_agents.markers import neutralize
        from persona_agents.models import embedded_checkpoint

        self.tok = AutoTokenizer.from_pretrained(embedded_checkpoint())
        self._neutralize = neutralize

    def count(self, text: str) -> int:
        """Tokens of the embedded tokenizer (TransformersGenerator.token_counter)."""
        return len(self.tok(text)["input_ids"]) if text else 0

    def budget_count(self, text: str) -> int:
        """As the request budget counts a value: the text as the prompt shows it."""
        return self.count(self.rendered(text))

    def list_count(self, values) -> int:
        """As the request budget counts a list: rendered, with its separators."""
        return self.count(", ".join(self.rendered(v) for v in values)) if values else 0

    def rendered(self, text: str) -> str:
        """As the prompt shows request text (prompt_format._safe_line)."""
        return " ".join(self._neutralize(str(text)).split())

    def fill(self, limit: int, max_chars: int, shape: str, prefix: str = "") -> str:
        """Text of at most `limit` tokens and `max_chars` characters, as close to `limit` as it gets."""
        text = prefix
        if shape == "nfkc":
            units: list[str] = list(NFKC_UNITS)
        else:
            units = []
            # Words first, then digits (one token each) to top up to the limit.
            for i in range(10_000):
                word = PLAIN_WORDS[i % len(PLAIN_WORDS)]
                candidate = text + (" " if text and not text.endswith("=") else "") + word
                used = self.budget_count(candidate)
                # Leave room for the rest of the limit as digits (a character each).
                if used > limit or len(candidate) + (limit - used) > max_chars:
                    break
                text = candidate
            units = [" 7", "7"]
        for unit in units:
            while True:
                candidate = text + unit
                if len(candidate) > max_chars or self.budget_count(candidate) > limit:
                    break
                text = candidate
        return text


def build_list(sizer: Sizer, shape: str, budget: dict[str, int], section: str) -> list[str]:
    """Items or actions at the section budget; whichever of (many short entries, few long ones)
    renders to more prompt tokens."""
    unit = "\ufdfa" if shape == "nfkc" else "a"
    many: list[str] = []
    while len(many) < 200 and sizer.list_count([*many, unit]) <= budget[section]:
        many.append(unit)
    few: list[str] = []
    while True:
        room = min(budget["value"], budget[section] - sizer.list_count(few) - (1 if few else 0))
        value = sizer.fill(room, NAME_CHARS, shape) if room > 0 else ""
        if not value or sizer.list_count([*few, value]) > budget[section]:
            break
        few.append(value)

    def rendered(values: list[str]) -> int:
        return sizer.count(f"{section}: " + ", ".join(sizer.rendered(v) for v in values))

    return max((many, few), key=rendered)


def build_game_state(sizer: Sizer, shape: str, budget: dict[str, int]) -> dict[str, str]:
    """game_state pairs (`key=value`, each at most the value budget) at the section budget."""
    def pairs_count(pairs: dict[str, str]) -> int:
        return sizer.list_count([f"{k}={v}" for k, v in sorted(pairs.items())])

    many: dict[str, str] = {}
    for key in KEYS[:MAX_KEYS]:
        if pairs_count({**many, key: ""}) > budget["game_state"]:
            break
        many[key] = ""
    few: dict[str, str] = {}
    for key in KEYS[:MAX_KEYS]:
        room = min(budget["value"], budget["game_state"] - pairs_count(few) - (1 if few else 0))
        if room <= sizer.budget_count(f"{key}="):
            break
        pair = sizer.fill(room, STATE_VALUE_CHARS - 2 + len(key) + 1, shape, prefix=f"{key}=")
        value = pair[len(key) + 1:]
        if not value or pairs_count({**few, key: value}) > budget["game_state"]:
            break
        few[key] = value

    def rendered(pairs: dict[str, str]) -> int:
        return sizer.count("game_state: " + ", ".join(f"{sizer.rendered(k)}={sizer.rendered(v)}"
                                                      for k, v in sorted(pairs.items())))

    return max((many, few), key=rendered)


def largest_body(sizer: Sizer, shape: str, budget: dict[str, int]) -> dict[str, Any]:
    return {
        "utterance": sizer.fill(budget["utterance"], UTTERANCE_CHARS, shape),
        "seed": 11,
        # The quest stage must be one the game declares (issue 27): its longest is all a request can send.
        "quest_stage": "in_progress",
        "location": sizer.fill(budget["value"], NAME_CHARS, shape),
        "items": build_list(sizer, shape, budget, "items"),
        "actions": build_list(sizer, shape, budget, "actions"),
        "game_state": build_game_state(sizer, shape, budget),
    }


def request_tokens(sizer: Sizer, body: dict[str, Any]) -> tuple[int, int]:
    """(tokens as the budget counts them, tokens of the prompt lines they render to) of a body."""
    counted = sizer.budget_count(body["utterance"])
    rendered = sizer.count(f"<PLAYER> {sizer.rendered(body['utterance'])}")
    for field in ("location", "quest_stage"):
        if body.get(field):
            counted += sizer.budget_count(body[field])
            rendered += sizer.count(f"{field}: {sizer.rendered(body[field])}")
    for field in ("items", "actions"):
        counted += sizer.list_count(body.get(field, []))
        rendered += sizer.count(f"{field}: " + ", ".join(sizer.rendered(v) for v in body.get(field, [])))
    pairs = body.get("game_state", {})
    counted += sizer.list_count([f"{k}={v}" for k, v in sorted(pairs.items())])
    if pairs:
        rendered += sizer.count("game_state: " + ", ".join(f"{sizer.rendered(k)}={sizer.rendered(v)}"
                                                           for k, v in sorted(pairs.items())))
    return counted, rendered


def history_tokens(sizer: Sizer, history: list[dict[str, str]], budget: int) -> tuple[int, int, int]:
    """(exchanges, tokens as the budget counts them, prompt tokens) of the history a turn shows:
    the newest exchanges within the budget (request_budget.truncate_history), at most the
    prompt step's history_turns."""
    kept, used = [], 0
    for exchange in reversed(history):
        cost = sizer.budget_count(exchange["player"]) + sizer.budget_count(exchange["npc"])
        if used + cost > budget:
            break
        used += cost
        kept.append(exchange)
    kept = kept[:HISTORY_TURNS_SHOWN]
    counted = sum(sizer.budget_count(e["player"]) + sizer.budget_count(e["npc"]) for e in kept)
    rendered = sum(sizer.count(f"<PLAYER> {sizer.rendered(e['player'])}\n<NPC> {sizer.rendered(e['npc'])}")
                   for e in kept)
    return len(kept), counted, rendered


# -- the server process's memory and CPU ---------------------------------------------------------
def memory_mb(pid: int) -> tuple[float, float]:
    """(resident set, its anonymous part) of `pid` in MB: VmRSS and RssAnon from /proc/PID/status
    (the anonymous part is what a turn allocates: KV cache, activations; it leaves out mapped
    files), else psutil's rss for both."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        rss = int(fields["VmRSS"].split()[0]) / 1024
        return rss, int(fields.get("RssAnon", fields["VmRSS"]).split()[0]) / 1024
    except (OSError, KeyError):
        import psutil

        rss = psutil.Process(pid).memory_info().rss / 2**20
        return rss, rss


def rss_mb(pid: int) -> float:
    return memory_mb(pid)[0]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the server process has used."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except ImportError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




class MemoryPeak:
    """The memory of `pid` just before the block and its peak while it runs, sampled every
    20 ms in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rss_before = self.anon_before = self.rss_peak = self.anon_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, anon = memory_mb(self.pid)
        self.rss_peak, self.anon_peak = max(self.rss_peak, rss), max(self.anon_peak, anon)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> "MemoryPeak":
        self.rss_before, self.anon_before = memory_mb(self.pid)
        self.rss_peak, self.anon_peak = self.rss_before, self.anon_before
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def growth(self) -> float:
        """How far the anonymous memory rose above its level just before the block."""
        return self.anon_peak - self.anon_before


# -- requests ---------------------------------------------------------------------------------
class Client:
    def __init__(self, base: str, npc: str):
        self.base, self.npc = base, npc
        self.statuses: list[int] = []

    def post(self, body: dict[str, Any] | None = None, content: bytes | None = None) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        if content is not None:
            response = httpx.post(f"{self.base}/v1/npcs/{self.npc}/turns", content=content,
                                  headers={"Content-Type": "application/json"}, timeout=900)
        else:
            response = httpx.post(f"{self.base}/v1/npcs/{self.npc}/turns", json=body, timeout=900)
        self.statuses.append(response.status_code)
        return response, time.perf_counter() - started

    def turn(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        response, seconds = self.post(body)
        if response.status_code != 200:
            raise RuntimeError(f"turn refused: {response.status_code} {response.text[:2000]}")
        return seconds, response.json()

    def history(self, player: str) -> list[dict[str, str]]:
        response = httpx.get(f"{self.base}/v1/players/{player}/npcs/{self.npc}/state", timeout=60)
        response.raise_for_status()
        return response.json()["history"]


def prepare_history(client: Client, sizer: Sizer, player: str, shape: str, turns: int, budget: int) -> None:
    """`turns` turns whose lines are sized so that all of them, replies included, just fit the
    history budget (each reply is at most MAX_NEW_TOKENS tokens; a short reply leaves its
    room to the next line)."""
    used = 0
    for k in range(turns):
        room = budget - used - MAX_NEW_TOKENS * (turns - k)
        limit = max(4, min(BUDGET_DEFAULTS["utterance"], room))
        line = sizer.fill(limit, UTTERANCE_CHARS, shape)
        _, out = client.turn({"player_id": player, "utterance": line, "seed": 21 + k})
        used += sizer.count(line) + sizer.count(out["text"])


def probe(client: Client, name: str, *, body: dict | None = None, content: bytes | None = None) -> tuple[int, float]:
    response, seconds = client.post(body, content)
    try:
        problem = response.json()
        what = f"code={problem.get('code')} field={problem.get('field') or ''}"
        if problem.get("errors"):
            what += " errors=" + ",".join(sorted({e["field"] for e in problem["errors"]}))[:200]
    except ValueError:
        what = f"body={response.text[:80]!r}"
    print(f"probe_{name}_status={response.status_code} probe_{name}_ms={seconds * 1000:.0f} ({what}; "
          f"{len(content) if content is not None else len(json.dumps(body))} bytes)")
    return response.status_code, seconds


def run_probes(client: Client) -> bool:
    """The attack of the issue and the body limit, each refused before any model work."""
    ok = True
    base = {"player_id": "rc-probe", "utterance": "Hello there."}
    digits = "1" * 12000
    checks = [
        ("state_string_12000_digits", {"body": {**base, "game_state": {"gold": digits}}}, (422,)),
        ("state_number_12000_digits", {"content": (json.dumps(base)[:-1] + ', "game_state": {"gold": '
                                                   + digits + "}}").encode()}, (422,)),
        ("state_number_4000_digits", {"content": (json.dumps(base)[:-1] + ', "game_state": {"gold": '
                                                  + "1" * 4000 + "}}").encode()}, (422,)),
        ("schema_maximum", {"body": {**base, "utterance": "word " * 99 + "word",
                                     "quest_stage": "q" * NAME_CHARS, "location": "l" * NAME_CHARS,
                                     "items": ["i" * NAME_CHARS] * 150, "actions": ["a" * NAME_CHARS] * 150,
                                     "game_state": {f"k{i:02d}" + "k" * 95: "v" * (STATE_VALUE_CHARS - 2)
                                                    for i in range(MAX_KEYS)}}}, (413, 422)),
        ("body_just_under_64k", {"body": {**base, "utterance": "x" * (64 * 1024 - 200)}}, (422,)),
        ("body_over_64k", {"body": {**base, "utterance": "x" * (64 * 1024 + 10)}}, (413,)),
    ]
    for name, kwargs, wanted in checks:
        status, _ = probe(client, name, **kwargs)
        if status not in wanted:
            ok = False
            print(f"UNEXPECTED: probe {name} answered {status}, wanted {wanted}", file=sys.stderr)
    return ok


def median(values: list[float]) -> float:
    return statistics.median(values)


def sources(record: dict[str, Any]) -> str:
    """Where the reply came from: `model` (decoded) or `authored` (a writer's line, no decoding)."""
    return record["meta"].get("reply_source", "model")


def joined(records: list[dict[str, Any]], key: str, fmt: str = ".2f") -> str:
    return ",".join(format(r[key], fmt) for r in records)


def npcs_with_prefill_chunk(tmp: Path, chunk: int) -> Path:
    """A copy of the sample NPC folder whose shared generate step runs the prompt pass in
    pieces of `chunk` tokens (the copy keeps relative paths working: it sits in the repo's
    place through a symlinked training folder)."""
    import shutil

    import yaml

    root = tmp / "game"
    shutil.copytree(REPO / "npcs", root / "npcs", symlinks=True)
    for name in ("training", "plugins"):
        (root / name).symlink_to(REPO / name)
    defaults = root / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text())
    for step in data["pipeline"]["generate"]:
        step.setdefault("options", {})["prefill_chunk"] = chunk
    defaults.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "npcs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npc", default="blacksmith_village_center")
    parser.add_argument("--ordinary", type=int, default=5, help="ordinary turns (median)")
    parser.add_argument("--largest", type=int, default=2, help="largest turns of each shape (median)")
    parser.add_argument("--alongside", type=int, default=2, help="ordinary turns alongside a largest one, per shape")
    parser.add_argument("--history-turns", type=int, default=4, help="turns that fill a largest player's history")
    parser.add_argument("--shapes", default=None,
                        help="largest request shapes, comma-separated: plain, nfkc (default both; plain with --quick)")
    parser.add_argument("--idle-wait", type=float, default=3.0, help="seconds idle before the idle RSS figures")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="passed to `serve` (1 on a CPU shared with other busy processes)")
    parser.add_argument("--prefill-chunk", type=int, default=None,
                        help="serve a copy of the sample NPCs whose generate step sets this prefill_chunk "
                             "(e.g. 100000: the prompt pass in one piece, as before chunked prefill)")
    parser.add_argument("--quick", action="store_true",
                        help="the plain shape only, 2 ordinary turns, 1 largest, 1 alongside, 1 history turn, "
                        "1 torch thread unless --torch-threads is given")
    args = parser.parse_args()
    if args.quick:
        args.ordinary, args.largest, args.alongside, args.history_turns, args.idle_wait = 2, 1, 1, 1, 1.5
        if args.torch_threads is None:
            args.torch_threads = 1  # a smoke run: never stalled by other work on a shared CPU
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the server process
    shapes = [s for s in (args.shapes or ("plain" if args.quick else "plain,nfkc")).split(",") if s]
    if not shapes or set(shapes) - {"plain", "nfkc"}:
        parser.error("--shapes takes plain and/or nfkc")
    began = time.perf_counter()

    sizer = Sizer()
    budget = dict(BUDGET_DEFAULTS)
    persona_budget = _persona_budget(args.npc)
    budget.update(persona_budget)
    bodies = {shape: largest_body(sizer, shape, budget) for shape in shapes}

    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--torch-threads", str(args.torch_threads)) if args.torch_threads else ()
        npcs = REPO / "npcs" if args.prefill_chunk is None else npcs_with_prefill_chunk(Path(tmp), args.prefill_chunk)
        server = start_cli_server(Path(tmp), npcs, api_key=None, rate_limit="off", ready_timeout=600,
                                  extra_args=extra)
        pid = server.process.pid
        client = Client(server.base_url, args.npc)
        results: dict[str, Any] = {}
        try:
            rss_ready = rss_mb(pid)
            client.turn(ordinary_request("rc-warm"))  # first-call costs out of the figures
            probes_ok = run_probes(client)

            # Players whose history is filled first: `largest` per shape, and `alongside` per shape.
            prepared = {shape: [f"rc-{shape}-largest-{i}" for i in range(args.largest)] for shape in shapes}
            along = {shape: [f"rc-{shape}-along-{i}" for i in range(args.alongside)] for shape in shapes}
            # Ordinary requests from players whose stored history is full too: what the request
            # itself adds, history being part of every turn of a conversation under way.
            with_history = [f"rc-ordinary-history-{i}" for i in range(args.ordinary)]
            jobs = [(p, shape) for shape in shapes for p in prepared[shape] + along[shape]]
            jobs += [(p, "plain") for p in with_history]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
                list(pool.map(lambda job: prepare_history(client, sizer, job[0], job[1], args.history_turns,
                                                          budget["history"]), jobs))
            results["history_prep_s"] = time.perf_counter() - started
            for shape in shapes:
                n, counted, rendered = history_tokens(sizer, client.history(prepared[shape][0]), budget["history"])
                results[f"{shape}_history"] = (n, counted, rendered)

            time.sleep(args.idle_wait)
            rss_idle = rss_mb(pid)

            def measured(body: dict[str, Any]) -> dict[str, Any]:
                cpu = cpu_s(pid)
                with MemoryPeak(pid) as memory:
                    seconds, out = client.turn(body)
                return {"s": seconds, "cpu": cpu_s(pid) - cpu, "tokens": out["meta"]["new_tokens"],
                        "rss_peak": memory.rss_peak, "growth": memory.growth, "meta": out["meta"]}

            load_start = loadavg()
            # The history turns grew the engine's cache and it was given back: the first
            # ordinary turn allocates its own cache, the next ones reuse it.
            ordinary = [measured(ordinary_request(f"rc-ordinary-{i}")) for i in range(args.ordinary)]
            rss_after_ordinary = rss_mb(pid)
            ordinary_history = [measured({**ordinary_request("unused"), "player_id": player})
                                for player in with_history]

            largest: dict[str, list] = {}
            rss_after: dict[str, float] = {}
            for shape in shapes:
                largest[shape] = [measured({**bodies[shape], "player_id": player}) for player in prepared[shape]]
                rss_after[shape] = rss_mb(pid)

            time.sleep(args.idle_wait)
            rss_idle_again = rss_mb(pid)

            alongside: dict[str, list] = {}
            for shape in shapes:
                alongside[shape] = []
                for i, player in enumerate(along[shape]):
                    with ThreadPoolExecutor(max_workers=1) as pool:
                        big_started = time.perf_counter()
                        big = pool.submit(client.turn, {**bodies[shape], "player_id": player})
                        time.sleep(max(0.0, big_started + 0.2 - time.perf_counter()))
                        seconds, out = client.turn(ordinary_request(f"rc-{shape}-beside-{i}"))
                        source = out["meta"].get("reply_source", "model")
                        big_seconds, _ = big.result()
                    alongside[shape].append((seconds, f"{out['meta']['new_tokens']}/{source}", big_seconds))
                    time.sleep(0.5)
            load_end = loadavg()
        finally:
            server.stop()
        log = server.log()

    # -- report ----------------------------------------------------------------------------------
    ord_s = median([t["s"] for t in ordinary])
    ord_cpu = median([t["cpu"] for t in ordinary])
    ord_growth = max(t["growth"] for t in ordinary)
    ord_peak = max(t["rss_peak"] for t in ordinary)
    counted, rendered = request_tokens(sizer, {**ORDINARY, "player_id": "x"})
    print(f"npc={args.npc} mode={'quick' if args.quick else 'full'} ordinary_turns={args.ordinary} "
          f"largest_turns_per_shape={args.largest} alongside_turns_per_shape={args.alongside} "
          f"history_turns={args.history_turns} torch_threads={args.torch_threads or 'default'} "
          f"prefill_chunk={args.prefill_chunk or 'default'} "
          f"cpus={os.cpu_count()} commit={git_head()} budget={json.dumps(budget, separators=(',', ':'))}")
    print(f"loadavg_start={load_start} loadavg_end={load_end} (1/5/15 min; above {os.cpu_count()} the machine "
          f"is shared and the times are noisy)")
    print(f"ordinary_request_tokens={counted} ordinary_request_prompt_tokens={rendered}")
    print(f"ordinary_s={ord_s:.2f} ordinary_new_tokens={ordinary[0]['tokens']} "
          f"ordinary_reply_source={','.join(sorted({sources(t) for t in ordinary}))} "
          f"ordinary_all_s={joined(ordinary, 's')}")
    print(f"ordinary_cpu_s={ord_cpu:.2f} ordinary_all_cpu_s={joined(ordinary, 'cpu')} (server CPU seconds)")
    hist_s = median([t["s"] for t in ordinary_history])
    hist_growth = max(t["growth"] for t in ordinary_history)
    print(f"ordinary_history_s={hist_s:.2f} ordinary_history_all_s={joined(ordinary_history, 's')} "
          f"anon_mb_growth_ordinary_history={hist_growth:.1f} (the ordinary request from players whose stored "
          f"history fills its budget, as the largest's does)")
    print(f"history_prep_s={results['history_prep_s']:.1f}")
    print(f"rss_mb_ready={rss_ready:.0f}")
    print(f"rss_mb_idle={rss_idle:.0f}")
    print(f"rss_mb_peak_ordinary={ord_peak:.0f} anon_mb_growth_ordinary={ord_growth:.1f} "
          f"anon_mb_growth_ordinary_all={joined(ordinary, 'growth', '.1f')}")
    print(f"rss_mb_after_ordinary={rss_after_ordinary:.0f}")
    for shape in shapes:
        prefix = "" if shape == "plain" else f"{shape}_"
        body = bodies[shape]
        counted, rendered = request_tokens(sizer, body)
        n_hist, hist_counted, hist_rendered = results[f"{shape}_history"]
        turns = largest[shape]
        big_s = median([t["s"] for t in turns])
        big_cpu = median([t["cpu"] for t in turns])
        growth = max(t["growth"] for t in turns)
        peak = max(t["rss_peak"] for t in turns)
        print(f"{prefix}largest_shape={shape} {prefix}largest_request_tokens={counted} "
              f"{prefix}largest_request_prompt_tokens={rendered} {prefix}largest_body_bytes={len(json.dumps(body))} "
              f"{prefix}largest_utterance_chars={len(body['utterance'])} {prefix}largest_items={len(body['items'])} "
              f"{prefix}largest_game_state_pairs={len(body['game_state'])}")
        print(f"{prefix}largest_history_exchanges={n_hist} {prefix}largest_history_tokens={hist_counted} "
              f"{prefix}largest_history_prompt_tokens={hist_rendered} "
              f"{prefix}largest_history_truncated="
              f"{','.join(str(t['meta'].get('history_truncated', 0)) for t in turns)}")
        print(f"{prefix}largest_accepted=yes {prefix}largest_s={big_s:.2f} "
              f"{prefix}largest_new_tokens={','.join(str(t['tokens']) for t in turns)} "
              f"{prefix}largest_reply_source={','.join(sources(t) for t in turns)} "
              f"{prefix}largest_all_s={joined(turns, 's')} "
              f"{prefix}largest_generate_ms={','.join(str(t['meta']['timings_ms']['generate']) for t in turns)}")
        print(f"{prefix}largest_cpu_s={big_cpu:.2f} "
              f"{prefix}largest_all_cpu_s={joined(turns, 'cpu')}")
        print(f"{prefix}rss_mb_peak_largest={peak:.0f} {prefix}anon_mb_growth_largest={growth:.1f} "
              f"{prefix}anon_mb_growth_largest_all={joined(turns, 'growth', '.1f')}")
        print(f"{prefix}rss_mb_after_largest={rss_after[shape]:.0f}")
        print(f"{prefix}largest_time_ratio={big_s / ord_s:.2f} (target: <= 2.0)")
        print(f"{prefix}largest_request_time_ratio={big_s / hist_s:.2f} (target: <= 2.0; the largest request / "
              f"the ordinary request at the same full stored history: what the request itself adds)")
        print(f"{prefix}largest_request_rss_ratio={growth / max(hist_growth, 1.0):.2f} (the same, memory growth, "
              f"the denominator floored at 1 MB)")
        print(f"{prefix}largest_cpu_ratio={big_cpu / ord_cpu:.2f} (server CPU seconds, largest / ordinary)")
        print(f"{prefix}largest_rss_ratio={growth / max(ord_growth, 1.0):.2f} (target: <= 2.0; the most a turn "
              f"raised the server's anonymous memory above its level just before it, largest / ordinary, "
              f"the denominator floored at 1 MB)")
        print(f"{prefix}largest_rss_total_ratio={peak / ord_peak:.2f} (whole-process peak RSS, largest / ordinary)")
        beside = [s for s, *_ in alongside[shape]]
        print(f"{prefix}alongside_s={median(beside):.2f} "
              f"{prefix}alongside_all_s={','.join(f'{s:.2f}' for s in beside)} "
              f"{prefix}alongside_new_tokens_source={','.join(str(t) for _, t, _ in alongside[shape])} "
              f"{prefix}alongside_largest_s={','.join(f'{b:.2f}' for *_, b in alongside[shape])}")
        print(f"{prefix}alongside_time_ratio={median(beside) / ord_s:.2f} (target: <= 1.5)")
    print(f"rss_mb_after_idle_again={rss_idle_again:.0f}")
    fives = sum(1 for s in client.statuses if s >= 500)
    tracebacks = log.count("Traceback")
    print(f"server_5xx={fives} server_log_tracebacks={tracebacks} probes_ok={'yes' if probes_ok else 'no'}")
    print(f"bench_s={time.perf_counter() - began:.0f}")
    if tracebacks or fives:
        print("server log (tail):\n" + log[-4000:], file=sys.stderr)
    return 0 if probes_ok and not fives else 1




def _persona_budget(npc: str) -> dict[str, int]:
    """The NPC's own request_budget, if its file (or _defaults.yaml) sets one."""
    import yaml

    found: dict[str, int] = {}
    for path in (REPO / "npcs" / "_defaults.yaml", REPO / "npcs" / f"{npc}.yaml"):
        if path.exists():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            found.update(data.get("request_budget") or {})
    return found


if __name__ == "__main__":
    sys.exit(main())
