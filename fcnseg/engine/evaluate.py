"""Scoring a model on a dataset at the labels' original resolution.

Each image goes through the model (optionally at several scales, mirrored, or tiled with a
sliding window; see ``fcnseg.engine.inference``), the logits are resized back to the label's
own size with bilinear interpolation and only then argmaxed: the ground truth is never
resized. One ``ConfusionMatrix`` accumulates every scored pixel; under ``distributed`` each
rank scores the shard ``indices[rank::world]`` and the matrices are summed.

Batches only ever hold images of one size: padding a smaller image to its batch-mates' size
changes what a large receptive field sees (with a random-init FCN-8s/ResNet-18 on
Oxford-IIIT Pet photos, 0.2-7 % of pixels changed class), so results would depend on the
batch size. Mixed-size datasets therefore get smaller batches; same-size ones full batches.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fcnseg.data.base import IGNORE_INDEX
from fcnseg.engine.crf import CRF, parse_crf
from fcnseg.engine.inference import TTA, parse_tta, parse_window, segment
from fcnseg.engine.precision import Precision, resolve_precision
from fcnseg.errors import ConfigError
from fcnseg.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


def _list_collate(batch: list) -> list:
    return batch


def _as_pair(item, normalise, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset item → (image (3, h, w) float, mask (H, W) int64)."""
    image, mask = item[0], item[1]
    if isinstance(image, np.ndarray) or (torch.is_tensor(image) and not image.is_floating_point()):
        if normalise is None:
            raise ConfigError(
                f"dataset item {index} is a raw uint8 image; build the dataset with "
                "transforms=eval_transforms(mean=..., std=...) or pass mean= and std= to evaluate()"
            )
        image = image.numpy() if torch.is_tensor(image) else image
        return normalise(image, np.asarray(mask))
    mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).long()
    return image, mask


def _class_names(dataset, num_classes: int) -> list[str]:
    names = list(getattr(dataset, "classes", ()) or ())
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    precision: str | Precision = "auto",
    batch_size: int = 1,
    tta: str | TTA | None = None,
    sliding_window: int | str | Sequence[int] | None = None,
    num_workers: int = 0,
    distributed: bool = False,
    max_images: int | None = None,
    progress: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crf: str | CRF | None = None,
) -> dict:
    """Scores ``model`` on ``dataset`` and returns the paper's metrics.

    ``dataset[i]`` gives (image (3, h, w) float normalised, mask (H, W) int) — or the raw
    uint8 pair, normalised here with ``mean``/``std``. ``batch_size`` > 1 batches images of
    equal size together (never padding), so the numbers do not depend on the batch size. ``tta``: e.g. ``"flip,scales=0.75,1,1.25"``
    (softmax probabilities averaged). ``sliding_window``: window size (int or (h, w)).
    ``crf``: refine the probabilities with the local dense CRF (``fcnseg.engine.crf``); it needs
    the normalisation's ``std`` (and ``mean``, which only raw datasets use).
    ``distributed``: score ``indices[rank::world]`` on each rank and sum the matrices.

    Returns ``ConfusionMatrix.compute()`` (``pixel_acc``, ``mean_acc``, ``mean_iou``,
    ``fw_iou`` as fractions, per-class lists ``iou``/``acc``) plus ``per_class``
    ({name: {"iou", "acc"}}), ``num_images`` and ``confusion`` (K x K list, rows = truth).
    The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    device = torch.device(device)
    if isinstance(precision, str):
        precision = resolve_precision(precision, device)
    tta = parse_tta(tta)
    window = parse_window(sliding_window)
    crf = parse_crf(crf)
    if crf is not None and std is None:
        raise ConfigError("evaluate(crf=...) needs the normalisation's std= (and mean=) to recover the images' colours")
    num_classes = int(getattr(dataset, "num_classes", 0) or len(dataset.classes))
    cm = ConfusionMatrix(num_classes, ignore_index=getattr(dataset, "ignore_index", IGNORE_INDEX))
    normalise = None
    if mean is not None and std is not None:
        from fcnseg.data.transforms import eval_transforms

        normalise = eval_transforms(mean=mean, std=std)

    indices = list(range(len(dataset)))
    if max_images is not None:
        indices = indices[: max(0, int(max_images))]
    rank, world = 0, 1
    if distributed and dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        indices = indices[rank::world]
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_list_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    # DDP would broadcast buffers on every forward, which hangs when ranks hold unequal
    # shards; the bare module gives the same numbers.
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", unit="img", file=sys.stderr, dynamic_ncols=True)
    num_images = 0

    def score(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        nonlocal num_images
        scores = segment(
            model,
            [p[0] for p in pairs],
            out_sizes=[tuple(p[1].shape[-2:]) for p in pairs],
            device=device,
            precision=precision,
            tta=tta,
            sliding_window=window,
            crf=crf,
            std=std,
        )
        for score_map, (_, mask) in zip(scores, pairs, strict=True):
            if score_map.shape[0] != num_classes:
                raise ConfigError(
                    f"the model predicts {score_map.shape[0]} classes but the dataset has "
                    f"{num_classes}; evaluate on the dataset the model was trained for"
                )
            cm.update(score_map.argmax(0), mask.to(score_map.device))
        num_images += len(pairs)
        if bar is not None:
            bar.update(len(pairs) * world)

    # Batches hold images of one size only: padding would change what the network sees near
    # the border of the smaller images, so results would depend on the batch. Images wait in
    # per-size groups (at most 4 batches' worth in all) until a group fills a batch.
    pending: dict[tuple[int, int], list] = {}
    waiting = 0
    try:
        position = 0
        for batch in loader:
            for item in batch:
                pair = _as_pair(item, normalise, indices[position])
                position += 1
                group = pending.setdefault(tuple(pair[0].shape[-2:]), [])
                group.append(pair)
                waiting += 1
                if len(group) == batch_size:
                    score(pending.pop(tuple(pair[0].shape[-2:])))
                    waiting -= batch_size
            if waiting >= 4 * batch_size:
                for group in pending.values():
                    score(group)
                pending.clear()
                waiting = 0
        for group in pending.values():
            score(group)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    if world > 1:
        cm.all_reduce()
        count = torch.tensor([num_images], dtype=torch.int64, device=cm.matrix.device)
        dist.all_reduce(count)
        num_images = int(count.item())
    result = cm.compute()
    names = _class_names(dataset, num_classes)
    result["per_class"] = {
        name: {"iou": iou, "acc": acc}
        for name, iou, acc in zip(names, result["iou"], result["acc"], strict=True)
    }
    result["num_images"] = num_images
    result["confusion"] = cm.matrix.cpu().tolist()
    return result
