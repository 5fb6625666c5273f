"""Split the generalist dialogue data into train and validation, by conversation.

    python training/generalist/build_splits.py

Reads every `data/*.jsonl` of this folder (the writers' new NPCs and the six sample NPCs
in many voices) and writes `data/split/train.jsonl` and `data/split/validation.jsonl`:
every turn of a conversation goes to the same file, and each NPC gives about 12% of its
conversations to validation (at least one), on a seeded random stream, so the split is
the same on every run. `heldout/` is never read: it measures NPCs no run trains on.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 2612
VALIDATION_SHARE = 0.12


def main() -> None:
    conversations: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((HERE / "data").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                conversations[record["npc_id"]][record["conversation_id"]].append(line)
    train, validation = [], []
    for npc_id in sorted(conversations):
        ids = sorted(conversations[npc_id])
        random.Random(f"{SEED}:{npc_id}").shuffle(ids)
        held = max(1, round(len(ids) * VALIDATION_SHARE))
        for index, cid in enumerate(ids):
            (validation if index < held else train).extend(conversations[npc_id][cid])
    out = HERE / "data" / "split"
    out.mkdir(exist_ok=True)
    for name, lines in (("train", train), ("validation", validation)):
        (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{len(conversations)} NPCs: {len(train)} training turns, {len(validation)} validation turns -> {out}")


if __name__ == "__main__":
    main()
