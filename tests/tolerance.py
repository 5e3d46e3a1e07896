"""Tensor comparisons whose tolerance follows the magnitude of what is compared.

fp32 sums accumulate in different orders on AVX2, AVX-512 and AMX kernels (and in NCHW or
channels_last, one image or a batch), so the same network gives outputs that differ by a few
units in the last place of its largest values. An absolute tolerance that passes on one CPU
fails on another once the values are large; a tolerance scaled by ``max|expected|`` does not.
"""

from __future__ import annotations

import torch


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float, msg: str = "") -> None:
    """``max|actual - expected| <= rel * max|expected|`` (shapes and dtypes must match).

    ``rel``: ~1e-5 for a few layers, ~1e-4 for a deep network (ResNet-18 through its head)."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale, msg=msg or None)
