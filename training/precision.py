"""Mixed precision for training and fine-tuning: bf16 autocast where the hardware has it."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively instead of being emulated (slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return setting == "on"


def autocast(device: torch.device, enabled: bool = True) -> Any:
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
