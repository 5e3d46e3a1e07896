"""The task check: an inexact engine (bf16, int8) is as good as eager fp32 when its masks score
the same on labelled images.

``task_data(ckpt, ...)`` loads the labelled images to check on: by default the run's own
validation split (the checkpoint's data config, as ``fcnseg eval`` scores it), or the data and
split given (``--calib-data``/``--calib-split``); ``None`` when there are none on this machine.
The images are resized to the scale the run evaluates at (its ``eval_tta``: a run trained on
2000x3000 images at 0.21 of their size is checked at ~430x640, what its engine will see), the
masks keep their size. ``score_engine(engine, data)`` scores one engine on them (one confusion matrix, the paper's
mean IU); ``judge(reference, candidate, tolerance)`` says whether the candidate qualifies:
mean IU at most ``max_miou_drop`` points below the reference and no class present in the
labels more than ``max_class_drop`` points below its reference IoU.

The comparison is paired (the same images, the same labels), so it measures what the engine
changes, not how good the model is: a subset of the split (``count`` images, evenly spread)
suffices, and keeps the check bounded in time.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.inference.specs import eval_scale

log = logging.getLogger(__name__)

# labelled images a check scores (evenly spread over the split): the comparison is paired
# (same images, same labels), so it needs far fewer than a model evaluation does
VERIFY_IMAGES = 48
# the check scores eager fp32 and each inexact candidate on its images: for a costly model
# (FCN-8s/VGG16 at 500x500: ~1.4 s an image in fp32 on 2 cores) it uses fewer of them, so
# that this scoring stays within CHECK_SECONDS (and the first call within ~3 minutes), but
# never fewer than MIN_CHECK_IMAGES
CHECK_SECONDS = 120.0
MIN_CHECK_IMAGES = 12


@dataclass(frozen=True)
class Tolerance:
    """How far an inexact engine may fall below eager fp32, in mean-IU points (0-100)."""

    max_miou_drop: float = 0.3
    max_class_drop: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_miou_drop", "max_class_drop"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {v!r}: give a number of mean-IU points >= 0 (default {getattr(Tolerance, name)})")


class TaskData:
    """Labelled images for the check, decoded on first use: normalised images (C, H, W) and
    masks (H, W) int64 of ``indices`` of ``dataset``. With ``scale`` the images are resized
    as the run's evaluation resizes them (its engine sees that size); the masks keep theirs."""

    def __init__(self, name: str, split: str, dataset, indices: list[int], scale: float = 1.0) -> None:
        self.name, self.split, self.dataset, self.indices = name, split, dataset, indices
        self.scale = float(scale)
        self.classes = list(dataset.classes)
        self.total = len(dataset)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _load(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            from fcnseg.inference.segment import _resize

            pairs = []
            for i in self.indices:
                item = self.dataset[i]
                image = item[0]
                if abs(self.scale - 1.0) > 1e-6:
                    h, w = image.shape[-2:]
                    image = _resize(image.float(), (max(1, round(h * self.scale)), max(1, round(w * self.scale))))
                pairs.append((image, torch.as_tensor(np.asarray(item[1])).long()))
            self._pairs = pairs
        return self._pairs

    @property
    def images(self) -> list[torch.Tensor]:
        return [p[0] for p in self._load()]

    @property
    def masks(self) -> list[torch.Tensor]:
        return [p[1] for p in self._load()]

    def describe(self) -> dict:
        d = {"data": self.name, "split": self.split, "images": len(self.indices), "of": self.total}
        return d if abs(self.scale - 1.0) < 1e-6 else {**d, "scale": self.scale}

    def subset(self, count: int) -> TaskData:
        """``count`` of these images, evenly spread (the decoded ones are reused)."""
        keep = spread(len(self.indices), count)
        sub = TaskData(self.name, self.split, self.dataset, [self.indices[i] for i in keep], self.scale)
        if self._pairs is not None:
            sub._pairs = [self._pairs[i] for i in keep]
        return sub

    def key(self) -> str:
        """Identifies the data for the cache: name, split, count and a digest of the files
        (path, size, mtime) — or of the decoded labels for a dataset without files."""
        import hashlib

        h = hashlib.sha256()
        samples = getattr(self.dataset, "samples", None)
        if samples:
            for i in self.indices:
                for path in samples[i]:
                    st = os.stat(path)
                    h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            for m in self.masks:
                h.update(np.ascontiguousarray(m.numpy()).tobytes())
        at = "" if abs(self.scale - 1.0) < 1e-6 else f"@{self.scale:g}"
        return f"{self.name}/{self.split}/{len(self.indices)}{at}/{h.hexdigest()[:12]}"


def spread(n: int, count: int) -> list[int]:
    """Up to ``count`` indices of ``0..n-1``, evenly spread (first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)).tolist() if n else []


def task_data(
    ckpt: Mapping,
    data: str | None = None,
    data_root: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    data_options: Mapping | None = None,
    count: int = VERIFY_IMAGES,
    required: bool = False,
) -> TaskData | None:
    """The labelled images to check engines on (module doc). ``None`` when the data cannot be
    loaded here (no files, another machine), unless ``required`` (the user named it: then the
    error is raised)."""
    from fcnseg.checkpoint import checkpoint_data, checkpoint_meta
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms

    if count < 1:
        raise ConfigError(f"--calib-images {count}: must be >= 1")
    try:
        name, root, options, split = checkpoint_data(ckpt.get("config") or {}, data, data_root, data_options, split)
        _, _, mean, std = checkpoint_meta(ckpt)
        ds = build_dataset(name, root=root, split=split, transforms=eval_transforms(mean=mean, std=std), **options)
        k = int(ckpt["model_config"].get("num_classes", 0))
        if k and ds.num_classes != k:
            raise ConfigError(f"{name}/{split} has {ds.num_classes} classes, the checkpoint {k}; name the data it was trained on with --calib-data")
        indices = spread(len(ds), count)
    except FcnsegError as e:
        if required:
            raise
        log.debug("no labelled data here: %s", str(e).splitlines()[0][:160])
        return None
    if not indices:
        if required:
            raise ConfigError(f"{name}/{split} holds no images; name another split with --calib-split")
        return None
    config = ckpt.get("config") or {}
    return TaskData(name, split, ds, indices, eval_scale(config.get("eval_tta"), config.get("scale")))


def train_data(ckpt: Mapping, count: int) -> TaskData | None:
    """``count`` images of the run's own training split (its config's ``data`` and
    ``train_split``, not the validation data), evenly spread: what int8 calibrates on. None when
    they are not on this machine."""
    config = ckpt.get("config") or {}
    if not config.get("data"):
        return None
    own = {k: v for k, v in config.items() if not k.startswith("val_")}
    return task_data({**ckpt, "config": own}, split=config.get("train_split") or "train", count=count)


def score_engine(engine: Callable[[torch.Tensor], torch.Tensor], data: TaskData, *, batch: int = 4) -> dict:
    """Mean IU (percent) and per-class IoU (percent, None where the class is absent from the
    labels) of ``engine`` on ``data``; images of one size run ``batch`` at a time."""
    from fcnseg.inference.segment import labels, segment
    from fcnseg.metrics import ConfusionMatrix

    k = len(data.classes)
    cm = ConfusionMatrix(k)
    images, masks = data.images, data.masks
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            chunk = idx[s : s + batch]
            maps = segment(engine, [images[i] for i in chunk], out_sizes=[tuple(masks[i].shape) for i in chunk])
            for i, m in zip(chunk, maps, strict=True):
                if m.shape[0] != k:
                    raise ConfigError(f"the model predicts {m.shape[0]} classes but {data.name} has {k}; check on the data it was trained for")
                cm.update(labels(m), masks[i])
    res = cm.compute()
    present = (cm.matrix.sum(1) > 0).tolist()
    return {
        "mean_iou": round(100 * res["mean_iou"], 3),
        "iou": [round(100 * v, 3) if p and not math.isnan(v) else None for v, p in zip(res["iou"], present, strict=True)],
    }


def judge(reference: dict, candidate: dict, classes: Sequence[str], tolerance: Tolerance) -> dict:
    """Whether ``candidate`` (a ``score_engine`` result) qualifies against ``reference``:
    ``{"qualified", "miou_delta", "worst_class", "worst_class_delta", "class_deltas", "reason"}``
    (deltas in points, candidate minus reference)."""
    d_miou = round(candidate["mean_iou"] - reference["mean_iou"], 3)
    deltas = {
        c: round(b - a, 3)
        for c, a, b in zip(classes, reference["iou"], candidate["iou"], strict=True)
        if a is not None and b is not None
    }
    worst = min(deltas, key=deltas.get) if deltas else None
    worst_d = deltas[worst] if worst else 0.0
    reasons = []
    if d_miou < -tolerance.max_miou_drop:
        reasons.append(f"mean IU {d_miou:+.2f} points (allowed -{tolerance.max_miou_drop:g})")
    if worst is not None and worst_d < -tolerance.max_class_drop:
        reasons.append(f"{worst} IoU {worst_d:+.2f} points (allowed -{tolerance.max_class_drop:g})")
    return {
        "qualified": not reasons,
        "miou_delta": d_miou,
        "worst_class": worst,
        "worst_class_delta": worst_d,
        "class_deltas": deltas,
        "reason": "; ".join(reasons) if reasons else "within tolerance",
    }
