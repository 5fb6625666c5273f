"""Optional extras (issue 32): the base install runs the CLI on the embedded model; `serve`
needs `[server]` and says so; QLoRA's bitsandbytes is `[train]`.

The packages of the extras are hidden from a child process the way an install without them
leaves them: `sys.modules[name] = None` makes `import name` fail and
`importlib.util.find_spec(name)` answer None, as for a package that is not there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib

from .conftest import REPO, cli_env

SERVER_PACKAGES = ("fastapi", "fastapi_offline", "uvicorn", "starlette")
TRAIN_PACKAGES = ("bitsandbytes",)


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {req.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower() for req in requirements}


def test_the_heavy_stacks_are_extras_not_base_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = _requirement_names(project["dependencies"])
    extras = _extras()
    assert {"fastapi", "fastapi-offline", "uvicorn"} <= _requirement_names(extras["server"])
    assert "bitsandbytes" in _requirement_names(extras["train"])
    assert not base & {"fastapi", "fastapi-offline", "uvicorn", "bitsandbytes"}, base


def _without(packages: tuple[str, ...], *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m persona_agents ARGS` in a child process where PACKAGES are not installed."""
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in packages), encoding="utf-8")
    env = cli_env()
    env["PYTHONPATH"] = str(hide) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "persona_agents", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_dialogue_needs_neither_the_server_nor_the_train_extra(tmp_path: Path):
    result = _without(SERVER_PACKAGES + TRAIN_PACKAGES, "run-dialogue", "--npc", "blacksmith_village_center",
                      "--say", "Can you fix my sword?", "--json", "--seed", "1", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    turn = json.loads(result.stdout.strip().splitlines()[-1])
    assert turn["text"].strip()
    assert turn["meta"]["model"].startswith("embedded:smollm2-135m-instruct")


def test_the_hiding_is_real(tmp_path: Path):
    # The check above means something only if the child really cannot import them.
    hide_check = _without(SERVER_PACKAGES, "--help", tmp_path=tmp_path)
    assert hide_check.returncode == 0, hide_check.stderr
    probe = tmp_path / "hide" / "probe.py"
    probe.write_text("import importlib.util\nprint(importlib.util.find_spec('fastapi'))\nimport fastapi\n",
                     encoding="utf-8")
    env = cli_env(PYTHONPATH=str(tmp_path / "hide"))
    done = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "None"
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_serve_without_the_server_extra_says_how_to_install_it(tmp_path: Path):
    result = _without(SERVER_PACKAGES, "serve", "--port", "0", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "pip install 'persona-agents[server]'" in result.stderr
    assert "fastapi" in result.stderr or "uvicorn" in result.stderr
