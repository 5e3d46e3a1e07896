"""Numeric precision: which autocast dtype and memory format to use on a device."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fcnseg.config import PRECISIONS
from fcnseg.errors import ConfigError

# fp32 on a CPU without native bf16 (there fp32 is the production path): channels_last,
# measured faster by benchmarks/fp32_layout.py for ResNet-18 FCN-8s/FCN-4s with fp32 on an
# AVX-512 EPYC standing in: inference 1.18-1.58x, the training step 1.05-1.15x (issue 27:
# 1.19-1.46x inference on Zen 2). On CPUs with native bf16, --precision fp32 is the reference
# run and keeps NCHW.
CPU_FP32_CHANNELS_LAST = True

log = logging.getLogger("fcnseg")
_told: set[str] = set()

@dataclass(frozen=True)
class Precision:
    """The resolved choice: ``dtype`` None means fp32 (no autocast)."""

    name: str  # "bf16" | "fp16" | "fp32"
    dtype: torch.dtype | None
    channels_last: bool
    use_scaler: bool  # fp16 needs a GradScaler; bf16 does not
    reason: str = field(default="", compare=False)  # why this choice, for the log

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


_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features() -> list[str]:
    """The CPU flags that decide the precision (of avx2, avx512f, avx512_bf16, amx_bf16 and the
    int8 dot products avx512_vnni, avx_vnni, amx_int8), from /proc/cpuinfo; elsewhere torch's
    dispatch level (e.g. ``["avx2"]``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in _FLAGS if f in flags]
    with contextlib.suppress(AttributeError, RuntimeError):
        level = torch.backends.cpu.get_cpu_capability().lower()  # "avx512", "avx2", "default"
        return {"avx512": ["avx2", "avx512f"], "avx2": ["avx2"]}.get(level, [])
    return []


def cpu_has_int8_dot() -> bool:
    """True on CPUs with an int8 dot-product instruction (VNNI or AMX). Without one, onnxruntime's
    uint8 x int8 kernels (AVX2's VPMADDUBSW) add pairs of products in 16 bits, which saturate
    with full 8-bit weights: int8 files are then quantized with 7-bit weights
    (``fcnseg.export.quantize``)."""
    return any(f in cpu_features() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _cpu_reason(features: list[str]) -> str:
    native = [f for f in features if f in ("avx512_bf16", "amx_bf16")]
    if native and cpu_has_fast_bf16():
        return f"CPU has {' and '.join(native)}"
    widest = "avx512f" if "avx512f" in features else "avx2" if "avx2" in features else "no avx2"
    return f"no native bf16: {widest} only" if widest != "no avx2" else "no native bf16, no avx2"


def resolve_precision(precision: str, device: torch.device | str, *, quiet: bool = False) -> Precision:
    """``auto`` picks bf16 + channels_last on CPUs with native bf16 and on GPUs that support it,
    fp16 with a grad scaler on GPUs without bf16, fp32 otherwise (channels_last on CPUs without
    native bf16: ``CPU_FP32_CHANNELS_LAST``). An explicit choice that the device cannot run raises
    ConfigError. ``reason`` says why (the CPU features seen); it is logged once (:func:`tell`),
    unless ``quiet`` (an engine other than torch runs, and says so itself)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    asked = precision
    if device_type == "cuda":
        why = f"GPU {torch.cuda.get_device_name(torch.device(device))}" + (", bf16 supported" if torch.cuda.is_bf16_supported() else ", no bf16")
    elif device_type == "cpu":
        why = _cpu_reason(cpu_features())
    else:
        why = f"device {device_type}"
    if precision == "auto":
        if device_type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device_type == "cpu" and cpu_has_fast_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    else:
        why = f"--precision {asked}; {why}"
    if precision == "fp16" and device_type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU; on CPU use bf16 (or fp32)")
    if precision == "bf16":
        chosen = Precision("bf16", torch.bfloat16, channels_last=True, use_scaler=False, reason=why)
    elif precision == "fp16":
        chosen = Precision("fp16", torch.float16, channels_last=True, use_scaler=True, reason=why)
    else:
        channels_last = device_type == "cuda" or (device_type == "cpu" and CPU_FP32_CHANNELS_LAST and not cpu_has_fast_bf16())
        chosen = Precision("fp32", None, channels_last=channels_last, use_scaler=False, reason=why)
    if not quiet:
        tell(chosen)
    return chosen


def describe(precision: Precision) -> str:
    """e.g. ``precision: bf16, channels_last (CPU has avx512_bf16)``."""
    layout = "channels_last" if precision.channels_last else "NCHW"
    return f"precision: {precision.name}, {layout}" + (f" ({precision.reason})" if precision.reason else "")


def tell(precision: Precision) -> None:
    """Logs :func:`describe` at INFO, once per process for each distinct choice (training
    validates many times; eval and predict resolve once)."""
    line = describe(precision)
    if line not in _told:
        _told.add(line)
        log.info("%s", line)


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/"auto" → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but no CUDA GPU is available")
    return torch.device(device)
