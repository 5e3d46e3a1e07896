"""A fully connected CRF over a local window, as post-processing of a score map.

DeepLab (Chen et al., ICLR 2015) sharpened FCN-style score maps with the dense CRF of
Krähenbühl & Koltun (NIPS 2011): unaries from the network's probabilities, Potts pairwise
terms weighted by two Gaussian kernels, an appearance kernel over position and colour

    w_a * exp(-|p_i - p_j|^2 / (2 theta_a^2) - |I_i - I_j|^2 / (2 theta_b^2))

and a smoothness kernel over position alone, ``w_s * exp(-|p_i - p_j|^2 / (2 theta_s^2))``,
solved by a few mean-field iterations. Their permutohedral-lattice filtering connects every
pair of pixels; here, as in ConvCRF (Teichmann & Cipolla, 2018), each pixel is connected to
the pixels of a square window around it (``radius``, sampled every ``dilation`` pixels), so
the whole thing is a few tensor operations per offset in torch, on any device, with no
compiled extension to build. Within the window the kernels are exactly the dense CRF's.

Mean-field with Potts compatibility: ``Q_i(l) ∝ exp(-U_i(l) + sum_m w_m sum_j k_m(i, j) Q_j(l))``
(the class-independent part of the Potts message cancels in the normalisation).
"""

from __future__ import annotations

import math

import torch

from fcnseg.inference.specs import CRF, parse_crf  # noqa: F401 (re-exported)


def _offsets(radius: int, dilation: int) -> list[tuple[int, int]]:
    """Window offsets in one half-plane: each symmetric pair (o, -o) once, (0, 0) excluded."""
    out = []
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue
            out.append((dy * dilation, dx * dilation))
    return out


def _shift(t: torch.Tensor, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (a, b) such that ``t[..., a]`` and ``t[..., b]`` are pixel pairs (i, i + (dy, dx))."""
    h, w = t.shape[-2:]
    ys_a, ys_b = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        xs_a, xs_b = slice(0, w - dx), slice(dx, w)
    else:
        xs_a, xs_b = slice(-dx, w), slice(0, w + dx)
    return (ys_a, xs_a), (ys_b, xs_b)


@torch.no_grad()
def crf_refine(probs: torch.Tensor, image: torch.Tensor, crf: CRF = CRF()) -> torch.Tensor:  # noqa: B008 (frozen)
    """Mean-field refinement of ``probs`` (K, H, W) (softmax probabilities) guided by
    ``image`` (3, H, W) or (H, W, 3), colours in 0-255 (uint8 or float). Returns the refined
    probabilities (K, H, W), float32."""
    if probs.dim() != 3:
        raise ValueError(f"probs must be (K, H, W), got shape {tuple(probs.shape)}")
    if image.dim() == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
        image = image.permute(2, 0, 1)
    if image.dim() != 3 or tuple(image.shape[-2:]) != tuple(probs.shape[-2:]):
        raise ValueError(
            f"image of shape {tuple(image.shape)} does not match the score map's size "
            f"{tuple(probs.shape[-2:])}; pass the image at the size of the labels"
        )
    probs = probs.float()
    if crf.iterations == 0:
        return probs.clone()
    image = image.to(probs.device, torch.float32)
    unary = probs.clamp_min(1e-8).log()  # -U
    smooth = crf.smoothness > 0  # the smoothness kernel's normaliser only when it is used
    # Kernel values per offset, computed once and normalised symmetrically as in Krähenbühl's
    # implementation (k_ij / sqrt(n_i n_j), n_i = sum_j k_ij), so that a weight w bounds the
    # message at w whatever the window holds: w_a k_a + w_s k_s for each symmetric pair.
    h, w = probs.shape[-2:]
    raw, norm_a, norm_s = [], probs.new_zeros(h, w), probs.new_zeros(h, w)
    for dy, dx in _offsets(crf.radius, crf.dilation):
        if dy >= h or abs(dx) >= w:
            continue
        a, b = _shift(image, dy, dx)
        d2 = float(dy * dy + dx * dx)
        colour = (image[(slice(None), *a)] - image[(slice(None), *b)]).square().sum(0)
        ka = colour.mul_(-0.5 / crf.theta_b**2).add_(-0.5 * d2 / crf.theta_a**2).exp_()
        ks = math.exp(-0.5 * d2 / crf.theta_s**2)
        norm_a[a].add_(ka)
        norm_a[b].add_(ka)
        if smooth:
            norm_s[a].add_(ks)
            norm_s[b].add_(ks)
        raw.append((a, b, ka, ks))
    inv_a = norm_a.clamp_min(1e-12).rsqrt_()
    inv_s = norm_s.clamp_min(1e-12).rsqrt_() if smooth else None
    pairs = []
    for a, b, ka, ks in raw:
        k = ka.mul_(inv_a[a]).mul_(inv_a[b]).mul_(crf.appearance)
        if smooth and ks > 1e-6:
            k.add_(inv_s[a] * inv_s[b] * (crf.smoothness * ks))
        pairs.append((a, b, k))
    q = probs
    for _ in range(crf.iterations):
        msg = torch.zeros_like(q)
        for a, b, k in pairs:
            sa, sb = (slice(None), *a), (slice(None), *b)
            msg[sa].addcmul_(q[sb], k)
            msg[sb].addcmul_(q[sa], k)
        q = (unary + msg).softmax(0)
    return q


