"""Numeric precision: which autocast dtype and memory format to use on a device."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from fcnseg.engine.config import PRECISIONS
from fcnseg.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """The resolved choice: ``dtype`` None means fp32 (no autocast)."""

    name: str  # "bf16" | "fp16" | "fp32"
    dtype: torch.dtype | None
    channels_last: bool
    use_scaler: bool  # fp16 needs a GradScaler; bf16 does not

    def autocast(self, device: torch.device | str):
        device_type = torch.device(device).type
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN runs bf16 convolutions natively."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """``auto`` picks bf16 + channels_last on CPUs with native bf16 and on GPUs that support it,
    fp16 with a grad scaler on GPUs without bf16, fp32 otherwise. An explicit choice that the
    device cannot run raises ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if precision == "auto":
        if device_type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device_type == "cpu" and cpu_has_fast_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    if precision == "fp16" and device_type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU; on CPU use bf16 (or fp32)")
    if precision == "bf16":
        return Precision("bf16", torch.bfloat16, channels_last=True, use_scaler=False)
    if precision == "fp16":
        return Precision("fp16", torch.float16, channels_last=True, use_scaler=True)
    return Precision("fp32", None, channels_last=device_type == "cuda", use_scaler=False)


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/"auto" → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but no CUDA GPU is available")
    return torch.device(device)
