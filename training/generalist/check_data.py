"""Check generalist dialogue data against its personas and game (issue 26).

    python training/generalist/check_data.py [--npcs-dir DIR ...] FILE.jsonl ...

Default persona folders: training/generalist/npcs and npcs (the six sample NPCs).
Errors (exit 1): record problems, flags the rules forbid in the record's state, state
that does not follow from the previous turn, out-of-world words. Warnings: repeated
replies, events with fewer than 3 labels, too few no-flag turns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from persona_agents.errors import PersonaAgentsError  # noqa: E402
from persona_agents.multihead.datacheck import check_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--npcs-dir", action="append", default=None)
    parser.add_argument("--max-warnings", type=int, default=40)
    args = parser.parse_args()
    dirs = args.npcs_dir or [str(ROOT / "training/generalist/npcs"), str(ROOT / "npcs")]
    try:
        report = check_files(args.files, dirs)
    except PersonaAgentsError as exc:
        print(exc)
        return 1
    for line in report.errors:
        print("ERROR", line)
    for line in report.warnings[: args.max_warnings]:
        print("warning", line)
    if len(report.warnings) > args.max_warnings:
        print(f"... and {len(report.warnings) - args.max_warnings} more warnings")
    print(report.summary())
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
