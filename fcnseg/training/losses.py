"""Training losses: cross-entropy over the labelled pixels (class weights, hard-pixel mining),
the same loss computed from a model's coarse scores a few images at a time
(``upsampled_segmentation_loss``), and the Lovász-softmax loss (a mean-IU surrogate).

Every loss takes ``target`` (N, H, W) int64 class indices with ``IGNORE_INDEX`` (255) excluded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fcnseg.data.base import IGNORE_INDEX


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, hard_pixels: float = 1.0
) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels (``IGNORE_INDEX`` excluded).

    ``logits`` (N, K, H, W), ``target`` (N, H, W) int64. With class ``weight`` (K,) the
    average is weighted, as ``F.cross_entropy`` does; a batch with no labelled pixel gives
    0 rather than NaN (and costs no host sync).

    ``hard_pixels < 1`` is bootstrapped cross-entropy (hard-pixel mining; Wu, Shen & van den
    Hengel 2016): the mean (class-weighted) loss of the ``hard_pixels`` fraction of the
    batch's pixels with the highest loss; the easy rest gives no gradient. Ignored pixels
    are never kept (with fewer labelled pixels than that, all labelled pixels are)."""
    logits = logits.float().contiguous()  # on channels_last logits cross_entropy is slower on CPU (~85 vs ~72 ms a full-res batch)
    per = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    return (per * _pixel_scale(per.detach(), target, weight, hard_pixels)).sum()


def _pixel_scale(per: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, hard_pixels: float) -> torch.Tensor:
    """Each pixel's factor in :func:`segmentation_loss`, ``(per * scale).sum()``, given the
    per-pixel (class-weighted) losses ``per`` (N, H, W)."""
    valid = target != IGNORE_INDEX
    if hard_pixels < 1.0:
        flat = per.flatten()
        k = max(1, math.ceil(hard_pixels * flat.numel()))
        threshold = flat.kthvalue(flat.numel() - k + 1).values  # the k-th largest loss
        keep = (per >= threshold) & valid
        return keep / keep.sum().clamp(min=1)
    denom = valid.sum() if weight is None else (weight[torch.where(valid, target, 0)] * valid).sum()
    return valid / denom.clamp(min=1)


# pixels of logits upsampled at a time by upsampled_segmentation_loss (11 classes: ~10 MB of
# float32); docs/experiments/camvid.md (session 16) has the timings that chose it
CHUNK_PIXELS = 2**18


def loss_chunk(images: int, pixels: int) -> int:
    """upsampled_segmentation_loss's default chunk for a batch of ``images`` of ``pixels``
    each: ``CHUNK_PIXELS`` pixels, and never the whole batch at once (its logits in one piece
    are what the chunks avoid)."""
    return max(1, min(CHUNK_PIXELS // pixels, math.ceil(images / 2)))


class _UpsampledLoss(torch.autograd.Function):
    """:func:`upsampled_segmentation_loss`: the forward keeps one float per pixel, the
    backward recomputes each chunk's logits and writes the cross-entropy gradient
    ``coef * (softmax - onehot)`` straight into them."""

    @staticmethod
    def forward(ctx, scores, target, weight, hard_pixels, upsample, chunk):  # noqa: ANN001, ANN205 (autograd signature)
        per = torch.empty(target.shape, dtype=torch.float32, device=scores.device)
        with torch.autocast(scores.device.type, enabled=False):
            for i in range(0, len(scores), chunk):
                logits = upsample(scores[i : i + chunk].float()).contiguous()
                per[i : i + chunk] = F.cross_entropy(logits, target[i : i + chunk], weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
        scale = _pixel_scale(per, target, weight, hard_pixels)
        coef = scale if weight is None else scale * weight[torch.where(target == IGNORE_INDEX, 0, target)]
        ctx.save_for_backward(scores, target, coef)
        ctx.upsample, ctx.chunk = upsample, chunk
        return (per * scale).sum()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        scores, target, coef = ctx.saved_tensors
        out = torch.empty_like(scores)
        with torch.autocast(scores.device.type, enabled=False):
            for i in range(0, len(scores), ctx.chunk):
                with torch.enable_grad():
                    s = scores[i : i + ctx.chunk].detach().float().requires_grad_()
                    logits = ctx.upsample(s)
                g = torch.softmax(logits.detach(), dim=1)
                t = target[i : i + ctx.chunk]
                idx = torch.where(t == IGNORE_INDEX, 0, t).unsqueeze(1)
                g.scatter_(1, idx, g.gather(1, idx) - 1)
                g *= (coef[i : i + ctx.chunk] * grad).unsqueeze(1)
                (out[i : i + ctx.chunk],) = torch.autograd.grad(logits, s, g)
        return out, None, None, None, None, None


def upsampled_segmentation_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    upsample,
    weight: torch.Tensor | None = None,
    hard_pixels: float = 1.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """``segmentation_loss(upsample(scores), target, weight, hard_pixels)`` computed
    ``chunk`` images at a time (default: as many as make ``CHUNK_PIXELS`` pixels, at most
    half the batch), in float32, without keeping the full-resolution logits.

    ``scores`` (N, K, h, w) are a model's coarse scores (``model(x, coarse=True)``) and
    ``upsample`` its last, parameter-free upsampling (``model.upsample_scores`` with the
    input's size). The logits of a few images stay in cache where the batch's would not:
    the loss tail of the CamVid recipe's full-resolution step (batch 8, 288x384) takes 66
    instead of 126 ms (the step 614 instead of 656); at half resolution, where the batch's
    logits fit in cache anyway, 21 instead of 17 (the step unchanged; docs/experiments/camvid.md)."""
    if chunk is None:
        chunk = loss_chunk(len(target), target[0].numel())
    return _UpsampledLoss.apply(scores, target, weight, hard_pixels, upsample, chunk)


def lovasz_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, max_pixels: int | None = 32768, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018): the Lovász
    extension of each class's Jaccard loss ``1 - IoU`` evaluated on the softmax
    probabilities, averaged over the classes present in the labelled pixels — a convex,
    differentiable surrogate of the mean IU the benchmark scores.

    ``logits`` (N, K, H, W), ``target`` (N, H, W) int64 with ``IGNORE_INDEX`` excluded. The
    batch's pixels are pooled (the dataset-level IoU of the batch, not a per-image mean).
    With ``max_pixels``, the loss is taken over ``max_pixels`` positions drawn uniformly
    (with replacement) from the batch, its labelled ones (each class needs a sort of the
    pixel errors; a 2^15 sample keeps that cheap: ~30 ms a batch on 2 cores); None: over all
    labelled pixels. A batch with no labelled pixel gives 0."""
    n, k = logits.shape[:2]
    flat = logits.reshape(n, k, -1)  # (N, K, HW), a view
    labels = target.reshape(-1)
    if max_pixels is not None and labels.numel() > max_pixels:
        # uniform positions (with replacement), then the labelled ones among them: no pass
        # over the whole batch beyond this gather
        idx = torch.randint(labels.numel(), (max_pixels,), generator=generator, device=labels.device)
        idx = idx[labels[idx] != IGNORE_INDEX]
    else:
        idx = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    if idx.numel() == 0:
        return logits.sum() * 0.0
    hw = flat.shape[2]
    prob = flat[idx // hw, :, idx % hw].float().softmax(dim=1)  # (P, K)
    labels = labels[idx]
    fg = F.one_hot(labels, k).to(prob.dtype).t()  # (K, P): each class's sort is contiguous
    present = fg.sum(1) > 0
    errors = (fg - prob.t()).abs()
    errors_sorted, perm = errors.sort(dim=1, descending=True)
    fg_sorted = fg.gather(1, perm)
    # gradient of the Lovász extension of the Jaccard loss (Alg. 1 of the paper), per class
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1.0 - fg_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_class = (errors_sorted * grad).sum(1)
    return per_class[present].mean()
