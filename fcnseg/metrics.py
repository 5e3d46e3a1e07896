"""The FCN paper's four segmentation metrics from one confusion matrix.

Follows the authors' ``score.py`` (shelhamer/fcn.berkeleyvision.org): rows are ground truth,
columns are predictions; per-class ratios whose denominator is zero are NaN and skipped by
the means (a class absent from both target and prediction does not count; a class absent
from the target but predicted scores IoU 0).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from fcnseg.data.base import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` int64 matrix on the tensors' device.

    ``update(pred, target)`` takes class-index tensors of the same shape (any shape, any
    device). Pixels whose target is ``ignore_index`` or outside ``[0, num_classes)`` are
    excluded; a prediction outside that range is an error (it is a bug upstream).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat: torch.Tensor | None = None

    def reset(self) -> None:
        self.mat = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}; "
                "resize the logits to the label's size before argmax"
            )
        k = self.num_classes
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
        # unscored pixels go to one extra bin instead of being gathered out (~4x faster a frame)
        skip = (target < 0) | (target >= k)
        if 0 <= self.ignore_index < k:
            skip |= target == self.ignore_index
        if (((pred < 0) | (pred >= k)) & ~skip).any():
            kept = pred[~skip]
            raise ValueError(f"predictions must lie in [0, {k}), got [{kept.min()}, {kept.max()}]")
        index = (k * target + pred).masked_fill_(skip, k * k)
        counts = torch.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k)
        if self.mat is None:
            self.mat = counts
        else:
            self.mat += counts.to(self.mat.device)

    def all_reduce(self) -> None:
        """Sums the matrix over all ranks of an initialised process group (no-op otherwise)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.mat is None:
            self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        if dist.get_backend() == "nccl" and self.mat.device.type != "cuda":
            self.mat = self.mat.cuda()
        dist.all_reduce(self.mat)

    @property
    def matrix(self) -> torch.Tensor:
        if self.mat is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.mat

    def compute(self) -> dict:
        """Returns ``pixel_acc``, ``mean_acc``, ``mean_iou``, ``fw_iou`` (fractions in [0, 1],
        NaN when no pixel was scored) and per-class lists ``iou`` and ``acc`` (NaN for a
        class the means skip)."""
        h = self.matrix.double().cpu()
        diag = h.diag()
        gt = h.sum(1)  # pixels of each class in the target
        pr = h.sum(0)  # pixels predicted as each class
        total = h.sum()
        with torch.no_grad():
            acc = diag / gt  # 0/0 -> nan
            iou = diag / (gt + pr - diag)
        freq = gt / total if total > 0 else torch.full_like(gt, math.nan)
        present = freq > 0
        return {
            "pixel_acc": float(diag.sum() / total) if total > 0 else math.nan,
            "mean_acc": _nanmean(acc),
            "mean_iou": _nanmean(iou),
            "fw_iou": float((freq[present] * iou[present]).sum()) if total > 0 else math.nan,
            "iou": iou.tolist(),
            "acc": acc.tolist(),
        }


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan
