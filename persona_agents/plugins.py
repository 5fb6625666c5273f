"""Plugin discovery and the registry of named steps.

Plugins come from four places, in this order: the built-ins (`DEFAULT_PLUGINS`), the
`persona_agents` entry-point group (pip-installed plugins), the local plugins folder
(`plugins/*.py` beside the NPC folder, or `--plugins-dir`), and nothing else. The
environment variable PERSONA_AGENTS_LOAD_PLUGINS, when set, is an allow-list of
comma-separated plugin names (entry-point names or local file stems); built-ins always
load. Every step registered through `register_steps` is attributed to its plugin, and
two steps of the same name fail loading, naming both plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pluggy

from . import hookspecs
from .errors import PluginError
from .persona import STAGES
from .steps import Step, StepOptions

ENTRY_POINT_GROUP = "persona_agents"
HOOK_NAMES: tuple[str, ...] = ("register_steps", "run_turn", "turn_completed")
ALLOW_LIST_ENV = "PERSONA_AGENTS_LOAD_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "persona_agents.default_plugins.core_turn",
    "persona_agents.default_plugins.normalize",
    "persona_agents.default_plugins.no_lore",
    "persona_agents.default_plugins.lore_steps",
    "persona_agents.default_plugins.memory_steps",
    "persona_agents.default_plugins.prompts",
    "persona_agents.default_plugins.transformers_generator",
    "persona_agents.default_plugins.multihead_generator",
    "persona_agents.default_plugins.game_rules",
    "persona_agents.default_plugins.authored_lines",
)


@dataclass(frozen=True)
class StepInfo:
    name: str
    stage: str
    cls: type[Step]
    plugin: str
    description: str


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "built-in", "entry point", or the local file path
    steps: tuple[str, ...]


class StepRegistry:
    """Named steps by stage, filled by the `register_steps` hook."""

    def __init__(self) -> None:
        self._steps: dict[str, StepInfo] = {}

    def add(self, cls: object, plugin: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise PluginError(
                f"Plugin '{plugin}' registered {cls!r}, which is not a persona_agents.steps.Step subclass.")
        name = getattr(cls, "name", None)
        stage = getattr(cls, "stage", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"Plugin '{plugin}' registered {cls.__name__} without a `name`.")
        if stage not in STAGES:
            raise PluginError(
                f"Plugin '{plugin}' registered step '{name}' with stage {stage!r}; valid stages: {', '.join(STAGES)}."
            )
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, StepOptions)):
            raise PluginError(
                f"Step '{name}' of plugin '{plugin}': Options must subclass persona_agents.steps.StepOptions.")
        if name in self._steps:
            other = self._steps[name].plugin
            raise PluginError(
                f"Duplicate step name '{name}': registered by plugin '{other}' and by plugin '{plugin}'. "
                "Rename one of the steps, or disable one plugin with PERSONA_AGENTS_LOAD_PLUGINS."
            )
        self._steps[name] = StepInfo(name, stage, cls, plugin, getattr(cls, "description", "") or "")

    def get(self, name: str) -> StepInfo | None:
        return self._steps.get(name)

    def names(self, stage: str) -> list[str]:
        return sorted(n for n, info in self._steps.items() if info.stage == stage)

    def all(self) -> list[StepInfo]:
        return sorted(self._steps.values(), key=lambda s: (STAGES.index(s.stage), s.name))


class PluginHost:
    """The pluggy manager plus the step registry it filled."""

    def __init__(self, pm: pluggy.PluginManager, registry: StepRegistry, plugins: list[PluginInfo]):
        self.pm = pm
        self.registry = registry
        self.plugins = plugins

    @property
    def hook(self):
        return self.pm.hook


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_local_module(path: Path) -> ModuleType:
    module_name = f"persona_agents_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd files
        raise PluginError(f"Cannot import local plugin {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginError(f"Local plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"Plugin '{name}' is invalid: {exc}") from exc
    # pluggy accepts an unknown hook name silently; check_pending names it. register()
    # is not atomic, so a failing plugin is unregistered before we report it.
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        known = ", ".join(HOOK_NAMES)
        raise PluginError(f"Plugin '{name}' implements an unknown hook: {exc}. Known hooks: {known}.") from exc


def load_plugins(plugins_dir: str | Path | None = None, extra: list[tuple[str, object]] | None = None) -> PluginHost:
    """Discover plugins, fill the step registry, and fail loudly on any problem.

    `extra` registers already-imported plugin objects (tests and embedding apps).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    allow = _allow_list()
    sources: dict[str, str] = {}

    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        _register(pm, module, module_name.rsplit(".", 1)[-1])
        sources[module_name.rsplit(".", 1)[-1]] = "built-in"

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allow is not None and ep.name not in allow:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"Plugin '{ep.name}' (entry point {ep.value}) failed to import: {exc}") from exc
        _register(pm, plugin, ep.name)
        sources[ep.name] = f"entry point {ep.value}"

    if plugins_dir is not None and Path(plugins_dir).is_dir():
        for path in sorted(Path(plugins_dir).glob("*.py")):
            if path.name.startswith("_") or (allow is not None and path.stem not in allow):
                continue
            if path.stem in sources:
                raise PluginError(
                    f"Local plugin {path} has the same name as plugin '{path.stem}' ({sources[path.stem]}).")
            _register(pm, _load_local_module(path), path.stem)
            sources[path.stem] = str(path)

    for name, plugin in extra or []:
        _register(pm, plugin, name)
        sources[name] = "registered by the application"

    registry = StepRegistry()
    registered: dict[str, list[str]] = {name: [] for name in sources}
    # Each implementation of the hook is called with its own callback, so every step is
    # attributed to the plugin that registered it (for errors and `persona-agents steps`).
    for impl in pm.hook.register_steps.get_hookimpls():
        def register(cls, _plugin=impl.plugin_name):
            registry.add(cls, _plugin)
            registered.setdefault(_plugin, []).append(cls.name)

        impl.function(register)
    infos = [PluginInfo(name, source, tuple(registered.get(name, ()))) for name, source in sources.items()]
    return PluginHost(pm, registry, infos)
