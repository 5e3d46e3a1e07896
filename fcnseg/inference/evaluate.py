"""Scoring a model on a dataset at the labels' original resolution.

Each image goes through the model (optionally at several scales, mirrored, or tiled with a
sliding window; see ``fcnseg.inference.segment``), the logits are resized back to the label's
own size with bilinear interpolation and only then argmaxed: the ground truth is never
resized. One ``ConfusionMatrix`` accumulates every scored pixel; under ``distributed`` each
rank scores the shard ``indices[rank::world]`` and the matrices are summed.

Batches only ever hold images of one size: padding a smaller image to its batch-mates' size
changes what a large receptive field sees (with a random-init FCN-8s/ResNet-18 on
Oxford-IIIT Pet photos, 0.2-7 % of pixels changed class), so results would depend on the
batch size. Mixed-size datasets therefore get smaller batches; same-size ones full batches.

``evaluate_checkpoint(path)`` is ``fcnseg eval``: it takes the data, normalisation and
TTA/CRF defaults from the checkpoint, checks the classes, and returns what ``--json`` prints.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fcnseg.checkpoint import checkpoint_data  # noqa: F401 (re-exported)
from fcnseg.data.base import IGNORE_INDEX
from fcnseg.errors import ConfigError
from fcnseg.inference.crf import CRF, parse_crf
from fcnseg.inference.segment import (
    TTA,
    checkpoint_inference,
    labels,
    parse_tta,
    parse_window,
    refine,
    segment,
)
from fcnseg.metrics import ConfusionMatrix
from fcnseg.precision import Precision, resolve_device, resolve_precision

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
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
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
    reuse: dict[int, torch.Tensor] | None = None,
) -> dict:
    """Scores ``model`` (a module, or a backend from ``fcnseg.inference.backends``) on
    ``dataset`` and returns the paper's metrics.

    ``dataset[i]`` gives (image (3, h, w) float normalised, mask (H, W) int) — or the raw
    uint8 pair, normalised here with ``mean``/``std``. ``batch_size`` > 1 batches images of
    equal size together (never padding), so the numbers do not depend on the batch size. ``tta``: e.g. ``"flip,scales=0.75,1,1.25"``
    (softmax probabilities averaged). ``sliding_window``: window size (int or (h, w)).
    ``crf``: refine the probabilities with the local dense CRF (``fcnseg.inference.crf``); it needs
    the normalisation's ``std`` (and ``mean``, which only raw datasets use).
    ``distributed``: score ``indices[rank::world]`` on each rank and sum the matrices.
    ``reuse``: probability maps by dataset index (float16). Without ``crf`` each image's map is
    put there; with ``crf``, the maps found there are refined instead of running the model
    again (the end-of-run test-time choice tries the CRF on the views it scored).
    ``model`` may also be any callable (N, 3, H, W) float → (N, K, H, W) logits (e.g. another
    inference backend); an ``nn.Module`` is put in eval mode for the run.

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
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_list_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
    else:  # decoding in threads ahead of the model (Pillow releases the GIL), no processes
        from fcnseg.inference.stream import prefetch

        loader = ([item] for item in prefetch(subset.__getitem__, range(len(subset)), workers=2, ahead=4 * batch_size))
    # DDP would broadcast buffers on every forward, which hangs when ranks hold unequal
    # shards; the bare module gives the same numbers.
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", unit="img", file=sys.stderr, dynamic_ncols=True)
    num_images = 0

    def score(entries: list[tuple[int, tuple[torch.Tensor, torch.Tensor]]]) -> None:
        nonlocal num_images
        ids, pairs = [e[0] for e in entries], [e[1] for e in entries]
        if crf is not None and reuse is not None and all(i in reuse for i in ids):
            scores = refine([reuse[i].float() for i in ids], [p[0].to(device) for p in pairs], crf, std)
        else:
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
                probs=reuse is not None,
            )
            if reuse is not None and crf is None:
                reuse.update((i, s.half()) for i, s in zip(ids, scores, strict=True))
        for score_map, (_, mask) in zip(scores, pairs, strict=True):
            if score_map.shape[0] != num_classes:
                raise ConfigError(
                    f"the model predicts {score_map.shape[0]} classes but the dataset has "
                    f"{num_classes}; evaluate on the dataset the model was trained for"
                )
            cm.update(labels(score_map), mask.to(score_map.device))
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
                group = pending.setdefault(tuple(pair[0].shape[-2:]), [])
                group.append((indices[position], pair))
                position += 1
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
        if isinstance(model, nn.Module):
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


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | dict,
    data: str | None = None,
    data_root: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    data_options: Mapping | None = None,
    tta: str | TTA | None = "auto",
    crf: str | CRF | None = "auto",
    sliding_window: int | str | Sequence[int] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    plots: str | os.PathLike | None = None,
    progress: bool = False,
    model: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str = "auto",
    onnx_path: str | os.PathLike | None = None,
    calib_data: str | None = None,
    calib_root: str | os.PathLike | None = None,
    calib_split: str | None = None,
    tolerance=None,
) -> dict:
    """Scores a checkpoint written by ``fcnseg train`` (a path, or the loaded dict) the way
    ``fcnseg eval`` does, and returns the dict its ``--json`` prints.

    Data: ``data``/``data_root``/``data_options``/``split``, defaulting to the run's
    validation data (:func:`checkpoint_data`); images are normalised with the checkpoint's
    ``mean``/``std`` (ImageNet's if it has none). ``tta``/``crf``: ``"auto"`` applies the
    ones the run saved (``eval_tta``/``eval_crf``), ``None``/``"none"`` none, else a spec
    (``"flip,scales=0.75,1,1.25"``; ``"default"`` or ``"appearance=2,theta_b=5"``).
    ``device``: None/"auto" = cuda when available. ``plots``: a folder to write
    ``confusion.png`` into. ``model``: what to run instead of the checkpoint's network, any
    callable (N, 3, H, W) normalised float → (N, K, H, W) logits (e.g. another inference
    backend); the checkpoint still gives data, classes, normalisation and defaults.
    ``backend``: the engine that runs the checkpoint's network when ``model`` is not given
    (``fcnseg.inference.backends``: auto (default), torch, compile, onnxruntime, openvino; the
    non-torch ones run fp32), ``onnx_path`` an exported file (e.g. int8) for the ONNX ones.
    ``calib_data``/``calib_root``/``calib_split``/``tolerance``: the labelled data and limits of
    auto's task check (``fcnseg.inference.loader.load_engine``; default: the run's validation split).

    Returns ``checkpoint``, ``data``, ``split``, ``num_images``, ``tta``, ``crf``,
    ``sliding_window`` (specs as strings, None when off), ``precision``, ``pixel_acc``,
    ``mean_acc``, ``mean_iou``, ``fw_iou`` (fractions), ``per_class`` ({name: {"iou",
    "acc"}}, NaN for a class absent from labels and predictions), ``classes``, ``confusion``
    (K x K, rows = truth), ``backend`` (for ``auto``: with the engine it chose), ``engine``
    (how it was chosen: the task check's figures, ``fcnseg.inference.loader.engine_evidence``) and, with ``plots``, ``plots`` (the written paths). A dataset
    whose class count differs from the checkpoint's is a ConfigError; differing class names
    only warn.
    """
    from fcnseg.checkpoint import checkpoint_meta, load_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.inference.backends import backend_name
    from fcnseg.inference.loader import engine_evidence

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers}: must be >= 0")
    window = parse_window(sliding_window)
    dev = resolve_device(None if device is None else str(device))
    path = None if isinstance(checkpoint, dict) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    tta, crf = checkpoint_inference(ckpt, tta, crf)
    name, root, options, split = checkpoint_data(
        ckpt.get("config") or {}, data, data_root, data_options, split
    )
    _, _, mean, std = checkpoint_meta(ckpt)  # ImageNet statistics (with a warning) if it has none
    dataset = build_dataset(
        name, root=root, split=split, transforms=eval_transforms(mean=mean, std=std), **options
    )
    k_model = int(ckpt["model_config"].get("num_classes", 0))
    if k_model != dataset.num_classes:
        raise ConfigError(
            f"{'the checkpoint' if path is None else f'checkpoint {path}'} predicts {k_model} "
            f"classes but dataset {name!r} has {dataset.num_classes}; evaluate on the dataset it "
            "was trained for (or the same --data-option settings)"
        )
    classes = list(dataset.classes)
    ck_classes = list(ckpt.get("classes") or [])
    if ck_classes and ck_classes != classes:
        warnings.warn(
            f"class names differ between checkpoint ({', '.join(ck_classes)}) "
            f"and dataset ({', '.join(classes)})",
            stacklevel=2,
        )
    if isinstance(model, nn.Module):  # the caller's module runs in --precision here
        prec = resolve_precision(precision, dev)
        model = model.to(dev)
    elif model is None:
        from fcnseg.inference.loader import load_engine

        model = load_engine(
            ckpt, backend, precision, dev, onnx_path=onnx_path, data=calib_data, data_root=calib_root,
            split=calib_split, tolerance=tolerance,
        )
    if not isinstance(model, nn.Module):
        prec = resolve_precision("fp32", dev, quiet=True)  # an engine runs its own precision

    res = evaluate(
        model,
        dataset,
        device=dev,
        precision=prec,
        batch_size=batch_size,
        tta=tta,
        sliding_window=window,
        num_workers=num_workers,
        max_images=max_images,
        progress=progress,
        mean=mean,
        std=std,
        crf=crf,
    )
    out = {
        "checkpoint": None if path is None else str(path),
        "data": name,
        "split": split,
        "num_images": res["num_images"],
        "tta": str(tta) if tta is not None else None,
        "crf": str(crf) if crf is not None else None,
        "sliding_window": list(window) if window else None,
        "precision": prec.name if isinstance(model, nn.Module) else getattr(model, "precision_name", "fp32"),
        "backend": backend_name(model),
        "engine": engine_evidence(model),
        "pixel_acc": res["pixel_acc"],
        "mean_acc": res["mean_acc"],
        "mean_iou": res["mean_iou"],
        "fw_iou": res["fw_iou"],
        "per_class": res["per_class"],
        "classes": classes,
        "confusion": res["confusion"],
    }
    if plots is not None:
        from fcnseg.inference.visualize import plot_confusion

        out["plots"] = [str(plot_confusion(res["confusion"], classes, Path(plots)))]
    return out
