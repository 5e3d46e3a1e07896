"""The forward pass shared by evaluation, prediction and validation during training.

``segment(model, images, ...)`` takes normalised images of any sizes and returns, per image,
a score map at a requested output size (the label's size for evaluation, the input's for
prediction) whose argmax is the prediction. Options:

- **padding**: images of different sizes in one call are padded (bottom/right, zeros = the
  mean colour after normalisation) into one batch; each logit map is cropped back to its own
  image before anything else. Padding changes what a large receptive field sees near the
  border, so a mixed-size batch can differ slightly from one image at a time;
  images of one size batch exactly.
- **test-time augmentation** (``TTA``): the image is resized by each scale (bilinear), run
  plainly and/or mirrored left-right (the two views of a scale in one batch); each output is resized back to the output size and
  turned into **softmax probabilities**, which are averaged. (Averaging probabilities, not
  logits, keeps one over-confident scale from dominating; the argmax is what is scored.)
- **CRF** (``crf``): the (averaged) probabilities at the output size are refined by the local
  dense CRF of ``fcnseg.inference.crf``, guided by the image's colours, which are recovered from
  the normalised input with the normalisation's ``std``.
- **sliding window**: the image (at each scale) is tiled with windows of a fixed size at a
  stride of 2/3 of the window, tiles are run in batches and their logits averaged where they
  overlap. For a model whose receptive field fits the window this equals the whole-image
  forward.

Logits leave the model in the autocast dtype and are cast to float32 before any resize or
softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.inference.crf import crf_refine
from fcnseg.inference.specs import CRF, TTA, parse_crf, parse_tta, parse_window, run_crf, run_tta  # noqa: F401 (re-exported)
from fcnseg.precision import Precision, resolve_precision

# what segment() runs: a module, or a backend (any callable (N, C, H, W) -> logits (N, K, H, W))
Model = nn.Module | Callable[[torch.Tensor], torch.Tensor]


def checkpoint_inference(
    ckpt: dict, tta: str | TTA | None = "auto", crf: str | CRF | None = "auto"
) -> tuple[TTA | None, CRF | None]:
    """The (TTA, CRF) to run a checkpoint with: ``"auto"`` takes the one its training run
    saved (config ``eval_tta`` / ``eval_crf``, set by ``fcnseg train --eval-tta/--eval-crf``),
    ``None`` or ``"none"`` turns it off, anything else is parsed as a spec."""
    config = ckpt.get("config") or {}
    saved = {"eval_tta": run_tta(config.get("eval_tta"), config.get("scale")), "eval_crf": run_crf(config.get("eval_crf"))}
    chosen = []
    for value, key, flag, parse in (
        (tta, "eval_tta", "--tta", parse_tta),
        (crf, "eval_crf", "--crf", parse_crf),
    ):
        if not (isinstance(value, str) and value == "auto"):
            chosen.append(parse(value))
            continue
        try:
            chosen.append(parse(saved[key]))
        except ConfigError as e:
            raise ConfigError(f"checkpoint config {key}: {e}; override it with {flag}") from None
    return chosen[0], chosen[1]


def _positions(length: int, window: int) -> list[int]:
    """Window starts covering ``[0, length)`` at a stride of ceil(2/3 window), the last one
    flush with the end."""
    if length <= window:
        return [0]
    stride = max(1, math.ceil(window * 2 / 3))
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def _run(model: Model, x: torch.Tensor, precision: Precision, device: torch.device) -> torch.Tensor:
    """One forward: ``x`` (N, C, H, W) → float32 logits (N, K, H, W) (resized to H, W if the
    model returns another size). A module runs here in ``precision``; any other callable (a
    ``fcnseg.inference.backends`` backend) is called as it is."""
    x = x.to(device, non_blocking=True)
    if not isinstance(model, nn.Module):
        out = model(x)
    else:
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            out = model(x)
    if isinstance(out, dict):  # tolerate torchvision-style {"out": ...} heads
        out = out["out"]
    out = out.float()
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _run_windows(
    model: Model,
    x: torch.Tensor,
    window: tuple[int, int],
    precision: Precision,
    device: torch.device,
    tiles_per_batch: int,
) -> torch.Tensor:
    """Sliding window over one image ``x`` (1, C, H, W) → float32 logits (1, K, H, W)."""
    _, _, h, w = x.shape
    th, tw = min(window[0], h), min(window[1], w)
    boxes = [(y, xx) for y in _positions(h, th) for xx in _positions(w, tw)]
    if len(boxes) == 1:
        return _run(model, x, precision, device)
    total = count = None
    for i in range(0, len(boxes), tiles_per_batch):
        chunk = boxes[i : i + tiles_per_batch]
        tiles = torch.cat([x[:, :, y : y + th, xx : xx + tw] for y, xx in chunk])
        out = _run(model, tiles, precision, device)
        if total is None:
            total = out.new_zeros(1, out.shape[1], h, w)
            count = out.new_zeros(1, 1, h, w)
        for (y, xx), o in zip(chunk, out, strict=True):
            total[0, :, y : y + th, xx : xx + tw] += o
            count[0, :, y : y + th, xx : xx + tw] += 1
    return total / count


def _logits_at(
    model: Model,
    images: Sequence[torch.Tensor],
    window: tuple[int, int] | None,
    precision: Precision,
    device: torch.device,
    tiles_per_batch: int,
) -> list[torch.Tensor]:
    """Logits (K, h_i, w_i) for each image (C, h_i, w_i): one padded batch, or one sliding
    window run per image."""
    if window is not None:
        return [_run_windows(model, im[None], window, precision, device, tiles_per_batch)[0] for im in images]
    hs = [im.shape[-2] for im in images]
    ws = [im.shape[-1] for im in images]
    if len(set(zip(hs, ws, strict=True))) == 1:
        batch = torch.stack(list(images))
    else:
        batch = images[0].new_zeros(len(images), images[0].shape[0], max(hs), max(ws))
        for b, im in zip(batch, images, strict=True):
            b[:, : im.shape[-2], : im.shape[-1]] = im
    out = _run(model, batch, precision, device)
    return [o[:, :h, :w] for o, h, w in zip(out, hs, ws, strict=True)]


def labels(scores: torch.Tensor) -> torch.Tensor:
    """The class of each pixel of a score map (K, H, W): ``scores.argmax(0)``, computed as
    ``max(0).indices`` (the same indices, first maximum on ties; 3 ms instead of 16 ms at
    11x360x480 on 2 cores: argmax's reduction over the outer dimension is slow in torch 2.13)."""
    return scores.max(0).indices


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) → (C, *size), bilinear; a no-op at the same size."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def segment(
    model: Model,
    images: Sequence[torch.Tensor],
    *,
    out_sizes: Sequence[tuple[int, int]] | None = None,
    device: torch.device | str = "cpu",
    precision: str | Precision = "fp32",
    tta: str | TTA | None = None,
    sliding_window: int | str | Sequence[int] | None = None,
    probs: bool = False,
    tiles_per_batch: int = 4,
    crf: str | CRF | None = None,
    std: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """Score maps for a list of normalised images.

    ``images``: tensors (C, h_i, w_i) (sizes may differ). ``out_sizes``: the (H_i, W_i) to
    return each map at (default: the image's own size); maps are resized there with bilinear
    interpolation. Returns float32 tensors (K, H_i, W_i) on ``device``: logits when neither
    TTA nor ``probs`` nor ``crf`` is asked for, otherwise softmax probabilities (averaged over
    the TTA views). ``crf`` (a ``CRF`` or its spec): refine each probability map with the local
    dense CRF of ``fcnseg.inference.crf``, guided by the image's colours at the output size, which
    it recovers from the normalised input with the normalisation's ``std`` (required then).
    ``model``: a module (the caller sets ``model.eval()``) or a backend from
    ``fcnseg.inference.backends.load_backend`` (then ``precision`` is the backend's business).
    """
    device = torch.device(device)
    if isinstance(precision, str):  # an engine (not a module) runs its own precision: quiet
        precision = resolve_precision(precision, device, quiet=not isinstance(model, nn.Module))
    tta = parse_tta(tta)
    window = parse_window(sliding_window)
    crf = parse_crf(crf)
    if crf is not None and std is None:
        raise ValueError("segment(crf=...) needs the normalisation's std= to recover the image's colours")
    if not len(images):
        return []
    images = [im.to(device, non_blocking=True) for im in images]
    sizes = [tuple(im.shape[-2:]) for im in images]
    out_sizes = [tuple(int(v) for v in s) for s in out_sizes] if out_sizes is not None else sizes
    if len(out_sizes) != len(images):
        raise ValueError(f"{len(images)} images but {len(out_sizes)} output sizes")

    if tta is None or tta.trivial:
        logits = _logits_at(model, images, window, precision, device, tiles_per_batch)
        maps = [_resize(lg, s) for lg, s in zip(logits, out_sizes, strict=True)]
        if crf is None:
            return [m.softmax(0) for m in maps] if probs else maps
        return refine([m.softmax(0) for m in maps], images, crf, std)

    acc = [None] * len(images)
    views = 0
    n = len(images)
    for scale in tta.scales:
        if scale == 1.0:
            scaled = list(images)
        else:
            scaled = [
                _resize(im.float(), (max(1, round(h * scale)), max(1, round(w * scale))))
                for im, (h, w) in zip(images, sizes, strict=True)
            ]
        for k in range(4) if tta.rot90 else (0,):
            turned = [torch.rot90(im, k, dims=(-2, -1)).contiguous() for im in scaled] if k else scaled
            # the plain and mirrored views of a scale (and turn) run as one batch (same sizes: no new padding)
            inputs = turned + [im.flip(-1) for im in turned] if tta.flip else turned
            logits = _logits_at(model, inputs, window, precision, device, tiles_per_batch)
            for j, lg in enumerate(logits):
                i, flip = j % n, j >= n
                if flip:
                    lg = lg.flip(-1)
                if k:
                    lg = torch.rot90(lg, -k, dims=(-2, -1))
                p = _resize(lg, out_sizes[i]).softmax(0)
                acc[i] = p if acc[i] is None else acc[i].add_(p)
            views += 2 if tta.flip else 1
    acc = [a.div_(views) for a in acc]
    return acc if crf is None else refine(acc, images, crf, std)


def refine(maps: list[torch.Tensor], images: list[torch.Tensor], crf: CRF, std: Sequence[float]) -> list[torch.Tensor]:
    """``crf_refine`` of each probability map, with its image's colours (0-255) at the map's size.
    Colour differences need only the std: the mean cancels."""
    out = []
    for p, im in zip(maps, images, strict=True):
        scale = torch.as_tensor(std, dtype=torch.float32, device=im.device).view(-1, 1, 1) * 255.0
        out.append(crf_refine(p, _resize(im.float(), tuple(p.shape[-2:])) * scale, crf))
    return out
