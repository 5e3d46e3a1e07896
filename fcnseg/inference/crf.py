"""A fully connected CRF over a local window, as post-processing of a score map.

DeepLab (Chen et al., ICLR 2015) sharpened FCN-style score maps with the dense CRF of
Krähenbühl & Koltun (NIPS 2011): unaries from the network's probabilities, Potts pairwise
terms weighted by two Gaussian kernels, an appearance kernel over position and colour

    w_a * exp(-|p_i - p_j|^2 / (2 theta_a^2) - |I_i - I_j|^2 / (2 theta_b^2))

and a smoothness kernel over position alone, ``w_s * exp(-|p_i - p_j|^2 / (2 theta_s^2))``,
solved by a few mean-field iterations. Their permutohedral-lattice filtering connects every
pair of pixels; here, as in ConvCRF (Teichmann & Cipolla, 2018), each pixel is connected to
the pixels of a square window around it (``radius``, sampled every ``dilation`` pixels). Within the
window the kernels are exactly the dense CRF's.

Mean-field with Potts compatibility: ``Q_i(l) ∝ exp(-U_i(l) + sum_m w_m sum_j k_m(i, j) Q_j(l))``
(the class-independent part of the Potts message cancels in the normalisation).

Two implementations of the same arithmetic (tests/test_crf.py holds both to a brute-force dense
CRF on the window):

- **compiled loops** (numba; on the CPU, the default): the kernels of all offsets in one padded
  table, and per iteration, per row and class, the row's message summed over four offsets per
  pass while it sits in the L1 cache, the rows split over the threads. 235 ms for a 360x480
  frame, 11 classes, the default window, on 2 cores of an AMD EPYC [avx512_bf16 avx512f] (the
  torch loop: 425 ms; ``benchmarks/crf_loops.py``);
- **torch operations**, a few per offset (GPUs, and installs without numba): each streams the
  whole (K, H, W) arrays through memory, 288 times an iteration at the default window.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fcnseg.inference.specs import CRF, parse_crf  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


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
    h, w = probs.shape[-2:]
    offsets = [(dy, dx) for dy, dx in _offsets(crf.radius, crf.dilation) if dy < h and abs(dx) < w]
    compiled = _kernel() if probs.device.type == "cpu" else None
    if compiled is not None:
        messages = _compiled_messages(compiled, image, offsets, crf)
    else:
        messages = functools.partial(_torch_messages, _torch_pairs(image, offsets, crf))
    q = probs
    for _ in range(crf.iterations):
        q = messages(q).add(unary).softmax(0)
    return q


def _torch_pairs(image: torch.Tensor, offsets: list[tuple[int, int]], crf: CRF) -> list:
    """The kernel of each offset: (a, b, k) with k[a] the weight of the pixel pairs (a, b).

    Normalised symmetrically as in Krähenbühl's implementation (k_ij / sqrt(n_i n_j),
    n_i = sum_j k_ij), so that a weight w bounds the message at w whatever the window holds:
    w_a k_a + w_s k_s for each symmetric pair."""
    h, w = image.shape[-2:]
    smooth = crf.smoothness > 0  # the smoothness kernel's normaliser only when it is used
    raw, norm_a, norm_s = [], image.new_zeros(h, w), image.new_zeros(h, w)
    for dy, dx in offsets:
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
    return pairs


def _torch_messages(pairs: list, q: torch.Tensor) -> torch.Tensor:
    """sum_j k_ij Q_j(l) for every pixel i: one operation per offset and direction."""
    msg = torch.zeros_like(q)
    for a, b, k in pairs:
        sa, sb = (slice(None), *a), (slice(None), *b)
        msg[sa].addcmul_(q[sb], k)
        msg[sb].addcmul_(q[sa], k)
    return msg


@functools.cache
def _kernel():
    """The compiled loops (a namespace; None without numba), compiled once per machine: numba
    caches the machine code on disk (beside the module, or in NUMBA_CACHE_DIR).

    Layout: tables are zero-padded by ``pad`` on every side, so each term runs over whole rows
    with no bounds to test; indices are unsigned (numba's wrap-around check on signed ones would
    stop the loops vectorising). ``offsets`` (n, 2) are the window offsets (dy >= 0), one per
    symmetric pair; ``table[o, pad + y, pad + x]`` weighs the pair (y, x) - (y + dy, x + dx)."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; this keeps odd installs working
        return None
    from types import SimpleNamespace

    u = numba.uint64
    FLOOR = np.float32(-80.0)  # noqa: N806 (a constant of the compiled loops)
    jit = numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy", boundscheck=False)

    @jit
    def exponents(img, offsets, pad, ca, cb, table, lo, hi):  # pragma: no cover - runs compiled
        """table[o] = ca |offset|^2 + cb |colour difference|^2 for offsets lo..hi, clamped at
        FLOOR (exp of it is tiny but normal: exp of -1e30 or of a denormal result is 10x slower
        in torch); FLOOR where the pair leaves the image, padding included."""
        _, h, w = img.shape
        rows, cols = table.shape[1], table.shape[2]
        for o in range(lo, hi):
            dy, dx = offsets[o, 0], offsets[o, 1]
            d2 = np.float32(ca * (dy * dy + dx * dx))
            xa = max(0, -dx)
            n, sa, sb, st = u(min(w, w - dx) - xa), u(xa), u(xa + dx), u(pad + xa)
            for r in range(rows):
                t = table[o, r]
                for i in range(cols):
                    t[i] = FLOOR
                y = r - pad
                if y < 0 or y >= h - dy:
                    continue
                r0, r1, r2 = img[0, y], img[1, y], img[2, y]
                g0, g1, g2 = img[0, y + dy], img[1, y + dy], img[2, y + dy]
                for i in range(n):
                    c0 = r0[sa + i] - g0[sb + i]
                    c1 = r1[sa + i] - g1[sb + i]
                    c2 = r2[sa + i] - g2[sb + i]
                    t[st + i] = max(FLOOR, d2 + cb * (c0 * c0 + c1 * c1 + c2 * c2))

    @jit
    def norms(table, offsets, pad, h, w, out, lo, hi):  # pragma: no cover - runs compiled
        """out[pad + y, pad + x] = sum_j k_ij for rows lo..hi (both ends of every pair)."""
        width = u(w)
        for y in range(lo, hi):
            row = out[pad + y]
            for o in range(offsets.shape[0]):
                dy, dx = offsets[o, 0], offsets[o, 1]
                ta, tb = table[o, pad + y], table[o, pad + y - dy]
                a, b = u(pad), u(pad - dx)
                for i in range(width):
                    row[a + i] += ta[a + i] + tb[b + i]

    @jit
    def finalise(table, offsets, inv_a, inv_s, wa, ws, lo, hi):  # pragma: no cover - runs compiled
        """table[o] = wa k_a / sqrt(n_a(i) n_a(j)) + ws[o] / sqrt(n_s(i) n_s(j)) for offsets lo..hi,
        over the whole padded table: inv_* are 0 outside the image, so every pair with an end
        outside (and the padding) becomes exactly 0."""
        rows, cols = table.shape[1], table.shape[2]
        for o in range(lo, hi):
            dy, dx = offsets[o, 0], offsets[o, 1]
            wso = ws[o]
            xa, xb = max(0, -dx), min(cols, cols - dx)
            n, a, b = u(xb - xa), u(xa), u(xa + dx)
            for r in range(rows):
                t = table[o, r]
                if r + dy >= rows:
                    for i in range(cols):
                        t[i] = 0.0
                    continue
                ia, ib, sa, sb = inv_a[r], inv_a[r + dy], inv_s[r], inv_s[r + dy]
                for i in range(xa):
                    t[i] = 0.0
                for i in range(xb, cols):
                    t[i] = 0.0
                for i in range(n):
                    t[a + i] = wa * t[a + i] * ia[a + i] * ib[b + i] + wso * sa[a + i] * sb[b + i]

    @jit
    def messages(qp, table, terms, out, y0, y1):  # pragma: no cover - runs compiled
        """out[c, y] = sum over the directed terms t of table[t0, y + t1, x + t2] * qp[c, y + t3,
        x + t4] for rows y0..y1, four terms per pass over a row (fewer loads and stores of it)."""
        n_cls, h, w = out.shape
        width = u(w)
        for y in range(y0, y1):
            for c in range(n_cls):
                row = out[c, y]
                for x in range(w):
                    row[x] = 0.0
                for g in range(0, terms.shape[0], 4):
                    k0, s0 = table[terms[g, 0], y + terms[g, 1]], qp[c, y + terms[g, 3]]
                    k1, s1 = table[terms[g + 1, 0], y + terms[g + 1, 1]], qp[c, y + terms[g + 1, 3]]
                    k2, s2 = table[terms[g + 2, 0], y + terms[g + 2, 1]], qp[c, y + terms[g + 2, 3]]
                    k3, s3 = table[terms[g + 3, 0], y + terms[g + 3, 1]], qp[c, y + terms[g + 3, 3]]
                    a0, b0 = u(terms[g, 2]), u(terms[g, 4])
                    a1, b1 = u(terms[g + 1, 2]), u(terms[g + 1, 4])
                    a2, b2 = u(terms[g + 2, 2]), u(terms[g + 2, 4])
                    a3, b3 = u(terms[g + 3, 2]), u(terms[g + 3, 4])
                    for i in range(width):
                        row[i] += (k0[a0 + i] * s0[b0 + i] + k1[a1 + i] * s1[b1 + i]) + (
                            k2[a2 + i] * s2[b2 + i] + k3[a3 + i] * s3[b3 + i]
                        )

    compiled = SimpleNamespace(exponents=exponents, norms=norms, finalise=finalise, messages=messages)
    try:  # compile (or load from the disk cache) now, on a tiny frame: a failure here falls back to torch
        image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8)
        _compiled_messages(compiled, image, _offsets(2, 1), CRF(radius=2, dilation=1))(torch.full((2, 8, 8), 0.5))
    except Exception as e:  # e.g. no writable cache folder, an unsupported CPU or numpy
        log.warning("the CRF's compiled loops are unavailable (%s: %s); it runs as torch operations", type(e).__name__, e)
        return None
    return compiled


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="fcnseg-crf")


def _split(fn, n: int, *args) -> None:
    """``fn(*args, lo, hi)`` over ``range(n)`` split into one band per torch thread (the compiled
    loops release the GIL, so the bands run at once)."""
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n))
    if threads == 1:
        fn(*args, 0, n)
        return
    edges = np.linspace(0, n, threads + 1).astype(np.int64)
    jobs = [_pool(threads).submit(fn, *args, int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    for job in jobs:
        job.result()


def _compiled_messages(compiled, image: torch.Tensor, offsets: list[tuple[int, int]], crf: CRF):
    """The kernels in one zero-padded table (the same values as ``_torch_pairs``, to float32
    rounding) and the message function of the mean-field loop, all in the compiled loops but the
    exponential (torch's, vectorised). The table (144 x 392 x 512 floats at 360x480: 115 MB) is
    reused from call to call in each thread: a fresh one costs more in page faults than the loops."""
    h, w = image.shape[-2:]
    n = len(offsets)
    pad = max([max(dy, abs(dx)) for dy, dx in offsets] + [0])
    offs = np.asarray(offsets, np.int64).reshape(n, 2)
    img = np.ascontiguousarray(image.cpu().numpy())
    table = _buffer("table", (n + 1, h + 2 * pad, w + 2 * pad))
    _split(compiled.exponents, n, img, offs, pad, np.float32(-0.5 / crf.theta_a**2), np.float32(-0.5 / crf.theta_b**2), table)
    torch.from_numpy(table[:n]).exp_()
    table[n] = 0  # a zero term: pads the message loop's terms to a multiple of four
    inner = (slice(pad, pad + h), slice(pad, pad + w))
    norm = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    _split(compiled.norms, h, table, offs, pad, h, w, norm)
    inv_a = np.zeros_like(norm)
    inv_a[inner] = 1.0 / np.sqrt(np.maximum(norm[inner], 1e-12))
    inv_s = np.zeros_like(norm)
    ws = np.zeros(n, np.float32)
    if crf.smoothness > 0:  # its normaliser: the offsets' ks summed over the pairs inside the image
        ks = np.exp(-0.5 * (offs**2).sum(1) / crf.theta_s**2).astype(np.float32)
        norm_s = np.zeros_like(norm)
        for (dy, dx), k in zip(offsets, ks, strict=True):
            ys, xs = slice(pad, pad + h - dy), slice(pad + max(0, -dx), pad + min(w, w - dx))
            norm_s[ys, xs] += k
            norm_s[ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx] += k
        inv_s[inner] = 1.0 / np.sqrt(np.maximum(norm_s[inner], 1e-12))
        ws = np.where(ks > 1e-6, crf.smoothness * ks, 0.0).astype(np.float32)
    _split(compiled.finalise, n, table, offs, inv_a, inv_s, np.float32(crf.appearance), ws)
    terms = []
    for o, (dy, dx) in enumerate(offsets):
        terms.append((o, pad, pad, pad + dy, pad + dx))  # Q of the neighbour (y + dy, x + dx), k at (y, x)
        terms.append((o, pad - dy, pad - dx, pad - dy, pad - dx))  # the same pair seen from (y + dy, x + dx)
    while len(terms) % 4:  # the loop takes four terms at a time
        terms.append((n, pad, pad, pad, pad))
    terms = np.asarray(terms, np.int64).reshape(-1, 5)
    qp, out = None, None

    def messages(q: torch.Tensor) -> torch.Tensor:
        nonlocal qp, out
        if qp is None:
            qp = np.zeros((q.shape[0], h + 2 * pad, w + 2 * pad), np.float32)  # the padding stays 0
            out = np.empty((q.shape[0], h, w), np.float32)
        qp[:, pad : pad + h, pad : pad + w] = q.numpy()
        _split(compiled.messages, h, qp, table, terms, out)
        return torch.from_numpy(out)

    return messages


_buffers = threading.local()


def _buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape``, kept per thread for the next call (contents undefined)."""
    held = getattr(_buffers, name, None)
    if held is None or held.shape != shape:
        held = np.empty(shape, np.float32)
        setattr(_buffers, name, held)
    return held
