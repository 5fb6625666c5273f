"""What this machine can train with: bf16 and fp16 compute, bitsandbytes optimizers.

`MultiHeadTrainingConfig` refuses an option this device cannot run, with the reason and
the fix (these functions' messages); `persona-agents train --recipe ... --dry-run` maps
such options to what runs here instead (recipe.py), so a GPU recipe's code paths can be
checked on a laptop before a GPU is rented.
"""

from __future__ import annotations

import platform
from functools import lru_cache

#: The optimizers `train --optim` offers. All are AdamW: the adapter and the fresh heads
#: train with two learning rates (trainer.build_optimizer).
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit",
              "paged_adamw_32bit")
#: Those that are bitsandbytes optimizers (8-bit states, and/or paged to host memory).
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")

BNB_FIX = "pip install 'persona-agents[train]' (bitsandbytes)"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cpu_has_native_bf16() -> bool:
    """x86: AVX512-BF16 or AMX (without them a bf16 matmul is emulated, slower than
    float32); other CPUs (Arm): whether a bf16 matmul runs at all."""
    import torch

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    try:
        x = torch.ones(2, 2, dtype=torch.bfloat16)
        return bool((x @ x).float().sum() == 8)
    except RuntimeError:
        return False


def bf16_problem() -> str | None:
    """Why bf16 compute cannot run here, or None."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return (f"bf16 needs an Ampere or newer GPU (compute capability 8.0+); {torch.cuda.get_device_name()} "
                    f"is {major}.{minor}: use --fp16 instead")
        return None
    if not _cpu_has_native_bf16():
        return ("bf16 without a CUDA GPU needs a CPU with native bfloat16 (AVX512-BF16 or AMX); this one would "
                "emulate it, slower than float32: drop --bf16 (float32 compute)")
    return None


def fp16_problem() -> str | None:
    """Why fp16 compute cannot run here, or None."""
    if cuda_available():
        return None
    return ("fp16 needs a CUDA GPU (torch.cuda.is_available() is False here): drop --fp16 (float32 compute), "
            "or use --bf16 on a CPU with native bfloat16")


@lru_cache(maxsize=None)
def _bnb_step_error(name: str) -> str | None:
    """One step of the bitsandbytes AdamW that `name` means (as transformers builds it) on
    a CPU tensor large enough for 8-bit states: the error text, or None if it runs."""
    import torch
    from bitsandbytes.optim import AdamW

    try:
        weight = torch.nn.Parameter(torch.ones(64, 64))
        optimizer = AdamW([weight], lr=1e-3, optim_bits=8 if "8bit" in name else 32, is_paged="paged" in name)
        weight.grad = torch.full_like(weight, 0.1)
        optimizer.step()
    except Exception as exc:  # any failure of the optional kernels: reported with the fix
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    return None


def optim_problem(name: str) -> str | None:
    """Why optimizer `name` cannot run here, or None."""
    if name not in OPTIMIZERS:
        return f"optim '{name}' is not offered; choose one of {', '.join(OPTIMIZERS)}"
    if name not in BNB_OPTIMIZERS:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return f"--optim {name} needs bitsandbytes: {BNB_FIX}, or use --optim adamw_torch"
    if cuda_available():
        return None
    # Recent bitsandbytes runs its 8-bit (and paged) optimizers on a CPU too; older ones
    # need CUDA. A step on a small tensor tells which.
    error = _bnb_step_error(name)
    if error:
        return (f"--optim {name}: bitsandbytes cannot run it without a CUDA GPU here ({error}); "
                "use --optim adamw_torch on this machine, or a CUDA GPU")
    return None


def bitsandbytes_problem() -> str | None:
    """Why 4-bit NF4 loading is not available, or None (load_base falls back and says so)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return f"4-bit NF4 loading needs bitsandbytes: {BNB_FIX}"
    return None
