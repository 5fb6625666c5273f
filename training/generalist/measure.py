"""Measure adapters the way a studio meets them (issue 26) and print the table.

    python training/generalist/measure.py --adapter training/adapters/smollm2-npc \
        [--adapter OTHER] [--quick] [--out results.json]

For each adapter, `persona-agents eval` on:
- the four held-out NPCs (another author, never trained on), with the persona's authored
  lines as few-shot evidence, and with the persona only (`--without-lines`);
- the six sample NPCs in another author's many voices (heldout/data/sample_voices.jsonl);
- `training/data/heldout_fresh.jsonl` (the sample NPCs, this project's unseen wordings).

Figures: flag micro-F1 after the game's rules, end_conversation recall after the rules,
delta MAE (trust / relationship) and the majority baseline's MAE. `--quick` scores the
first 8 turns of each set (a smoke test that the measurement runs, as `make test` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELD = ROOT / "training" / "generalist" / "heldout"

SETS = [
    ("new NPCs, persona + authored lines", HELD / "data" / "new_npcs.jsonl", HELD / "npcs", []),
    ("new NPCs, persona only", HELD / "data" / "new_npcs.jsonl", HELD / "npcs", ["--without-lines"]),
    ("sample NPCs, many voices (other author)", HELD / "data" / "sample_voices.jsonl", ROOT / "npcs", []),
    ("sample NPCs, heldout_fresh", ROOT / "training" / "data" / "heldout_fresh.jsonl", ROOT / "npcs", []),
]


def run_eval(adapter: Path, data: Path, npcs: Path, extra: list[str], quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            lines = data.read_text(encoding="utf-8").splitlines()[:8]
            data = Path(tmp) / data.name
            data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        done = subprocess.run(
            [sys.executable, "-m", "persona_agents", "eval", "--adapter", str(adapter), "--npcs-dir", str(npcs),
             "--data", str(data), "--json", "--no-base-lm", *extra],
            cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"eval failed for {adapter} on {data}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def row(report: dict) -> dict:
    ruled = report.get("after_rules") or report
    end = ruled["per_flag"].get("end_conversation", {})
    return {"n": report["n_examples"], "f1_after_rules": round(ruled["flag_micro_f1"], 3),
            "f1_raw": round(report["flag_micro_f1"], 3),
            "end_conversation_recall": None if not end.get("support") else round(end["recall"], 3),
            "mae_trust": round(report["delta_mae_trust"],
                3), "mae_relationship": round(report["delta_mae_relationship"], 3),
            "baseline_mae": [round(report["baseline"]["delta_mae_trust"], 3),
                             round(report["baseline"]["delta_mae_relationship"], 3)],
            "unknown_events": report.get("events_unknown_to_adapter")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {}
    print("| adapter | turns | flag micro-F1 after rules | end_conversation recall | delta MAE trust / rel. "
          "(majority) |")
    print("|---|---|---|---|---|")
    for adapter in args.adapter:
        for label, data, npcs, extra in SETS:
            r = row(run_eval(ROOT / adapter, data, npcs, extra, args.quick))
            results[f"{adapter} | {label}"] = r
            end = "-" if r["end_conversation_recall"] is None else f"{r['end_conversation_recall']:.2f}"
            print(f"| {Path(adapter).name}: {label} | {r['n']} | {r['f1_after_rules']:.3f} | {end} | "
                  f"{r['mae_trust']:.3f} / {r['mae_relationship']:.3f} ({r['baseline_mae'][0]:.3f} / "
                  f"{r['baseline_mae'][1]:.3f}) |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
