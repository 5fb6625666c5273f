"""Write `npcs/tests/` from the full behaviour plans here, minus the shipped adapter's misses.

`make test` runs `npcs/tests/`, so it must pass with the shipped adapter; these plans are
the targets. After retraining, run the targets (`persona-agents test training/eval_plans/
--repeat 3`), list every expectation that did not pass 3 of 3 in `MISSES` below, and run
this script: the guard plans are the targets with those `flags` expectations removed
(refusals, `no_flags`, always stay: the game's rules guarantee them).

    python training/eval_plans/derive_guard_plans.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
GUARDS = HERE.parent.parent / "npcs" / "tests"

#: (plan name, turn number from 1, flag) the shipped adapter misses, measured with
#: --repeat 3. None today: the heads refitted on 2026-12-04 with the standing gates masked
#: (`make adapter-heads`) pass all 52 target expectations 3 of 3.
MISSES: set[tuple[str, int, str]] = set()

NOTE = ("# The expectations the shipped adapter misses (none today) are kept in\n"
        "# training/eval_plans/ (the full targets) and left out of this folder, which\n"
        "# `make test` runs. Every refusal is here: the game's rules guarantee them.\n"
        "# Written by training/eval_plans/derive_guard_plans.py: edit the targets, then rerun it.\n")


def header(text: str) -> str:
    """The target file's leading comment lines."""
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def drop_misses(document: dict) -> int:
    """Remove the listed missed `flags` expectations from a plan file in place; returns how many."""
    removed = 0
    for plan in document["plans"]:
        for number, turn in enumerate(plan["turns"], start=1):
            expect = turn.get("expect") or {}
            kept = [f for f in expect.get("flags", []) if (plan["name"], number, f) not in MISSES]
            removed += len(expect.get("flags", [])) - len(kept)
            if kept:
                expect["flags"] = kept
            else:
                expect.pop("flags", None)
            turn["expect"] = expect  # may be empty: the turn still runs and moves the state
    return removed


def derive(source: Path) -> tuple[str, int]:
    """The guard plan file's text for one target file, and how many expectations it drops."""
    text = source.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    removed = drop_misses(document)
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return header(text) + NOTE + body, removed


def main() -> None:
    GUARDS.mkdir(parents=True, exist_ok=True)
    total = 0
    for source in sorted(HERE.glob("*.yaml")):
        text, removed = derive(source)
        total += removed
        (GUARDS / source.name).write_text(text, encoding="utf-8")
    print(f"wrote {GUARDS}: {total} expectation(s) left out of {len(MISSES)} listed misses")
    if total != len(MISSES):
        raise SystemExit("a listed miss matched no expectation: check the plan names and turn numbers")


if __name__ == "__main__":
    main()
