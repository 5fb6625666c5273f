"""Time to first token with and without the fast engine's prefix cache (issue 29).

Target: "`ttft_ratio` at most 0.4 on turn 5 of a sample conversation."

Sectioned prompt version 2 opens with what is the same on every turn of an NPC (its
persona, its events, its example lines); the fast engine keeps that part's cache
(`prefix_cache_tokens`) and a turn computes only the rest. Two copies of the seed's game
(examples/seed_game/, whose adapter `seed-tiny` is a version 2 adapter on the embedded
model) differ in one option: `prefix_cache_tokens` 4096 (the default) or 0. Both let the
model speak (no `authored_lines` step), so the first token is the model's, streamed as it
is generated. The same
conversation is played on each, turn by turn in alternating order, with the same seeds;
a turn's time to first token is when its first piece of reply text reaches the stream.

Prints `ttft_s_cached=` and `ttft_s_uncached=` of the last turn, `ttft_ratio=` (cached /
uncached, target at most 0.4), the medians over turns 2 to N, the prompt and prefix token
counts and the engine's prefix cache hits.

    python bench/prefix_cache.py [--quick] [--turns 5] [--game seed|sample]

`--game sample`: the sample NPCs instead (Brann, a conversation of the sample world),
with the version 3 adapter (`training/adapters/smollm2-npc-v3`: persona, then the
conversation, then the turn's own parts, so a turn reuses the last one's cache up to its
newest exchange); `--version 2` the version 2 adapter (only the persona is reused: its
conversation comes after the turn's lore and player state). The sample NPCs' default
adapter is version 1, whose prompt has no static opening.

`--quick`: 2 turns (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from run_info import git_head, loadavg  # noqa: E402

#: (NPC, a conversation with it) per game.
GAMES = {
    "seed": ("elder_mossbrook", [
        "Why is everyone so gloomy?",
        "What happened to the well?",
        "Is there anything I can do to help?",
        "Who was the last person to see the spring running?",
        "I will look into it. Where should I start?",
        "Do you trust the shopkeeper?",
        "Thank you, elder.",
    ]),
    "sample": ("blacksmith_village_center", [
        "Good day, smith. Busy morning?",
        "This sword broke in half. Can you help?",
        "Where can I find iron ore?",
        "Is the old mine safe these days?",
        "What do you make of Jason going missing?",
        "How much for a hatchet?",
        "Thanks. I'll be back with the ore.",
    ]),
}
SAMPLE_ADAPTERS = {v: REPO / "training" / "adapters" / f"smollm2-npc-v{v}" for v in (2, 3)}


def game_copy(root: Path, name: str, prefix_cache_tokens: int, game: str = "seed", version: int = 3) -> Path:
    import yaml

    folder = root / name
    if game == "seed":
        shutil.copytree(REPO / "examples" / "seed_game", folder, ignore=shutil.ignore_patterns("checkpoints"))
    else:
        shutil.copytree(REPO / "npcs", folder / "npcs")
        shutil.copytree(REPO / "plugins", folder / "plugins")
    defaults = folder / "npcs" / "_defaults.yaml"
    data = yaml.safe_load(defaults.read_text(encoding="utf-8"))
    for step in data["pipeline"]["generate"]:
        step.setdefault("options", {})["prefix_cache_tokens"] = prefix_cache_tokens
        if game == "sample":
            step["options"]["adapter"] = str(SAMPLE_ADAPTERS[version])
    # No authored_lines step: a step that may rewrite the reply makes the stream wait for the
    # whole reply, and the first token would be the last.
    data["pipeline"]["postprocess"] = ["game_rules"]
    defaults.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return folder / "npcs"


def timed_turn(manager, npc: str, line: str, seed: int) -> tuple[float, float, dict]:
    """(seconds to the first reply text, seconds for the whole turn, meta)."""
    from persona_agents.streaming import stream_to

    started = time.perf_counter()
    first: list[float] = []

    def sink(piece: str) -> None:
        if piece and not first:
            first.append(time.perf_counter() - started)

    with stream_to(sink):
        response = manager.turn(npc, line, player_id="bench", seed=seed)
    total = time.perf_counter() - started
    return (first[0] if first else total), total, dict(response.meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 turns (a smoke run)")
    parser.add_argument("--game", choices=sorted(GAMES), default="seed",
                        help="the seed's game (its v2 adapter) or the sample NPCs (their v3 or v2 adapter)")
    parser.add_argument("--version", type=int, choices=(2, 3), default=3,
                        help="--game sample: the prompt version (its adapter) to play")
    args = parser.parse_args()
    npc, lines = GAMES[args.game]
    turns = min(2 if args.quick else args.turns, len(lines))

    from persona_agents.manager import AgentManager

    with tempfile.TemporaryDirectory() as tmp:
        managers = {"cached": AgentManager(game_copy(Path(tmp), "cached", 4096, args.game, args.version)),
                    "uncached": AgentManager(game_copy(Path(tmp), "uncached", 0, args.game, args.version))}
        for manager in managers.values():
            manager.warm_up(npc)
        load_start = loadavg()
        ttft: dict[str, list[float]] = {name: [] for name in managers}
        whole: dict[str, list[float]] = {name: [] for name in managers}
        metas: dict[str, dict] = {}
        for number, line in enumerate(lines[:turns], 1):
            names = list(managers) if number % 2 else list(managers)[::-1]
            for name in names:
                first, total, meta = timed_turn(managers[name], npc, line, 10 + number)
                ttft[name].append(first)
                whole[name].append(total)
                metas[name] = meta
        engine = managers["cached"].pipeline(npc).steps["generate"][0].engine.batch
        hits, misses, reused = engine.prefix_hits, engine.prefix_misses, engine.prefix_reused_tokens

    def later(values: list[float]) -> float:
        return statistics.median(values[1:] if len(values) > 1 else values)

    version = args.version if args.game == "sample" else 2
    print(f"game={args.game} prompt_version={version} npc={npc} mode={'quick' if args.quick else 'full'} "
          f"turns={turns} commit={git_head()} cpus={os.cpu_count()}")
    print(f"loadavg_start={load_start} loadavg_end={loadavg()}")
    print(f"prefix_hits={hits} prefix_misses={misses} prefix_reused_tokens={reused} (the cached copy's engine)")
    print(f"ttft_s_cached={ttft['cached'][-1]:.3f} ttft_s_uncached={ttft['uncached'][-1]:.3f} (turn {turns})")
    print(f"ttft_s_cached_median={later(ttft['cached']):.3f} ttft_s_uncached_median={later(ttft['uncached']):.3f} "
          f"(turns 2-{turns})")
    print(f"turn_s_cached_median={later(whole['cached']):.3f} turn_s_uncached_median={later(whole['uncached']):.3f}")
    print(f"reply_source={metas['cached'].get('reply_source', 'model')}")
    print(f"ttft_ratio={ttft['cached'][-1] / ttft['uncached'][-1]:.3f} (turn {turns}; target: <= 0.4)")


if __name__ == "__main__":
    main()
