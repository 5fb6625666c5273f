"""Helpers for the server tests: a real `persona-agents serve` on a free loopback port.

Servers are real uvicorn processes started through the CLI (or, where a test needs
settings the CLI does not expose, uvicorn.Server in a thread); traffic only ever goes
to 127.0.0.1. One tiny-model server is shared by the test modules of a session.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from .conftest import REPO, cli_env, persona_dict

TEST_PLUGINS = REPO / "tests" / "plugins"
API_KEY = "test-key-0123456789"
#: The shared server's per-player limit; tests use fresh player ids so only the 429 test hits it.
SHARED_RATE_LIMIT = "12/min"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_npcs(folder: Path, model_dir: Path) -> Path:
    """NPCs on the tiny random model, with the test plugins they use in `plugins/` beside them.

    - `smith`: a stand-in for a state head proposes give_item and trust +0.1 every turn;
      `game_rules` lets give_item fire only in_progress with iron_ore (payload item=sword).
      Its normalize_input allows 200 characters.
    - `guard`: the plainest pipeline.
    - `broken`: its postprocess step raises on every turn (a 500 that must not leak).
    """
    folder.mkdir(parents=True, exist_ok=True)
    plugins = folder.parent / "plugins"
    plugins.mkdir(exist_ok=True)
    for name in ("proposer.py", "failing_steps.py"):
        shutil.copy(TEST_PLUGINS / name, plugins / name)
    smith = persona_dict(
        "smith", str(model_dir),
        location="forge",
        flag_rules={"give_item": {"stages": ["in_progress"], "requires_items": ["iron_ore"],
                                  "payload": {"item": "sword"}}},
    )
    smith["pipeline"]["preprocess"] = [{"name": "normalize_input", "options": {"max_chars": 200}}]
    smith["pipeline"]["postprocess"] = [{"name": "propose_flags", "options": {"flags": ["give_item"], "trust": 0.1}},
                                        "game_rules"]
    broken = persona_dict("broken", str(model_dir))
    broken["pipeline"]["postprocess"] = [{"name": "explode", "options": {"on_turn": 1}}]
    for npc_id, data in (("smith", smith), ("guard", persona_dict("guard", str(model_dir))), ("broken", broken)):
        (folder / f"{npc_id}.yaml").write_text(yaml.safe_dump(data))
    return folder


@dataclass
class LiveServer:
    base_url: str
    db_url: str
    api_key: str | None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def wait_ready(base_url: str, headers: dict, process: subprocess.Popen | None, timeout: float, log=lambda: "") -> None:
    """Until /readyz answers 200 (models loaded, database reachable)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
        try:
            last = httpx.get(f"{base_url}/readyz", headers=headers, timeout=5)
            if last.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s (last: {last and last.text}):\n{log()}")


def start_cli_server(workdir: Path, npcs_dir: Path, *, api_key: str | None = API_KEY, rate_limit: str = "off",
                     extra_args: tuple[str, ...] = (), ready_timeout: float = 180,
                     db_url: str | None = None) -> LiveServer:
    """`python -m persona_agents serve` on a free loopback port with its own SQLite file
    (or the database `db_url` names, which replicas may share)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db_url = db_url or f"sqlite:///{workdir / 'state.db'}"
    log_path = workdir / "server.log"
    args = [sys.executable, "-m", "persona_agents", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--npcs-dir", str(npcs_dir), "--db", db_url, "--rate-limit", rate_limit, "--log-level", "warning",
            *extra_args]
    env = cli_env()
    env.pop("PERSONA_AGENTS_API_KEY", None)
    if api_key:
        env["PERSONA_AGENTS_API_KEY"] = api_key
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", db_url, api_key, process, log_path)
    try:
        wait_ready(server.base_url, server.headers, process, ready_timeout, server.log)
    except BaseException:
        server.stop()
        raise
    return server


_SHARED: dict[str, LiveServer] = {}


def shared_tiny_server(tmp_path_factory, tiny_model_dir: Path) -> LiveServer:
    """One CLI server on the tiny NPCs for the whole session (API key on, 12 turns/min per player)."""
    if "tiny" not in _SHARED:
        root = tmp_path_factory.mktemp("shared-server")
        npcs = write_tiny_npcs(root / "npcs", tiny_model_dir)
        server = start_cli_server(root, npcs, rate_limit=SHARED_RATE_LIMIT)
        _SHARED["tiny"] = server
        atexit.register(server.stop)
    return _SHARED["tiny"]


@contextmanager
def thread_server(app):
    """A uvicorn.Server in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn thread server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_sse(response: httpx.Response, started: float | None = None):
    """(event, data, seconds since `started`) for each event of a streamed response."""
    import json

    started = time.perf_counter() if started is None else started
    event, data = None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data)), time.perf_counter() - started
            event, data = None, []


