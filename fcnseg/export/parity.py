"""Parity: an exported or converted model against eager PyTorch fp32 on the logits.

``max|Δlogit| <= RTOL x max|logit|`` and argmax agreement ``>= MIN_AGREEMENT`` on deterministic
image-like inputs (``parity_inputs``) of several sizes, odd ones included. Models that upsample
through max-pooling switches may flip a switch where two values of a window tie to the last
bits: for them up to ``SWITCH_FLIP_PIXELS`` of the pixels may be beyond the tolerance
(``fcnseg.export`` module doc).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

PARITY_SIZES: tuple[tuple[int, int], ...] = ((97, 131), (360, 480), (512, 512))
RTOL = 1e-4  # max |Δlogit| relative to max |logit|
MIN_AGREEMENT = 0.9999  # argmax agreement
SWITCH_FLIP_PIXELS = 1e-3  # pixels beyond RTOL allowed in a model with max-unpooling (module doc)


@dataclass
class Parity:
    """Export check figures for one input size."""

    size: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    agreement: float
    off_pixels: float = 0.0  # fraction of the pixels with some logit beyond RTOL x max|logit|
    allowed_off: float = 0.0  # SWITCH_FLIP_PIXELS for a model with max-unpooling, else 0

    @property
    def rel(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-30)

    @property
    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and (self.rel <= RTOL or self.off_pixels <= self.allowed_off)

    def __str__(self) -> str:
        off = ""
        if self.rel > RTOL:
            off = f" on {100 * self.off_pixels:.3f} % of the pixels"
            if self.allowed_off:
                off += f" (max-unpooling switch flips: up to {100 * self.allowed_off:g} % allowed)"
        return (
            f"{'x'.join(str(s) for s in self.size)}: max|Δlogit| {self.max_abs_diff:.2e} "
            f"({self.rel:.1e} of max|logit| {self.max_abs_logit:.3g}){off}, argmax agreement {100 * self.agreement:.4f} %"
        )

    def figures(self) -> dict:
        """The figures as stored in an exported file's ``fcnseg.parity``."""
        return {
            "size": list(self.size),
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "agreement": self.agreement,
            "off_pixels": self.off_pixels,
        }


def switch_flips_allowed(model: nn.Module) -> float:
    """``SWITCH_FLIP_PIXELS`` if ``model`` max-pools with switches (max-unpooling), else 0."""
    has = any(isinstance(m, nn.MaxPool2d) and m.return_indices for m in model.modules())
    return SWITCH_FLIP_PIXELS if has else 0.0


def compare(ref: torch.Tensor, out: torch.Tensor, allowed_off: float = 0.0) -> Parity:
    """Parity of ``out`` against the reference logits ``ref`` (both (N, K, H, W));
    ``allowed_off``: ``switch_flips_allowed(model)``."""
    ref, out = ref.float(), torch.as_tensor(out).float()
    if ref.shape != out.shape:
        return Parity(tuple(ref.shape), float("inf"), float(ref.abs().max()), 0.0, 1.0, allowed_off)
    diff = (ref - out).abs()
    scale = float(ref.abs().max())
    return Parity(
        tuple(ref.shape),
        float(diff.max()),
        scale,
        float((ref.argmax(1) == out.argmax(1)).float().mean()),
        float((diff.amax(1) > RTOL * scale).float().mean()),
        allowed_off,
    )


def parity_inputs(sizes: Sequence[tuple[int, int]] = PARITY_SIZES, in_channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic normalised-image-like inputs (1, C, h, w): smooth random fields (so the
    logits vary like on photos, not like on white noise) with a little noise on top."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.randn(1, in_channels, max(2, h // 16), max(2, w // 16), generator=g)
        x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        out.append(x + 0.1 * torch.randn(1, in_channels, h, w, generator=g))
    return out


def check_parity(model: nn.Module, run, inputs: Iterable[torch.Tensor]) -> list[Parity]:
    """``run(x) -> logits`` compared with ``model(x)`` (fp32 eager) on each input."""
    results = []
    allowed = switch_flips_allowed(model)
    with torch.no_grad():
        for x in inputs:
            results.append(compare(model(x), run(x), allowed))
    return results
