"""What a bench prints about the run itself, so runs can be told apart and judged:
the checkout's commit and the machine's load."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_head() -> str:
    """The checkout's commit (read only), to tell runs apart."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg() -> str:
    """1/5/15-minute load; above the core count the machine is shared and times are noisy."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"
