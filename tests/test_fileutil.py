"""The cross-process file lock that keeps two processes from building one cache at once."""

from __future__ import annotations

import subprocess
import sys

HOLD = """
import sys, time
from pathlib import Path
from persona_agents.fileutil import file_lock
with file_lock(Path(sys.argv[1])):
    start = time.monotonic()
    time.sleep(0.4)
    print(start, time.monotonic())
"""


def test_two_processes_never_hold_the_lock_at_once(tmp_path):
    lock = tmp_path / "cache" / "build.lock"  # its folder does not exist yet
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (_, first_end), (second_start, _) = spans
    assert second_start >= first_end
