"""A training run's data: the datasets (checked first), their classes, the class weights and
the classes copy-paste moves, and the loader of a progressive stage."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from fcnseg.config import TrainConfig
from fcnseg.data.sampling import EpochSampler, SeededDataset
from fcnseg.errors import ConfigError, DataError
from fcnseg.training import distributed as ddp

log = logging.getLogger("fcnseg.train")
# the median-frequency weights (and the rare classes copy-paste picks) are counted on at most
# this many training masks, spread evenly: a large dataset's run does not spend its budget
# decoding every mask before the first step (CamVid's 367 frames, the Pet and EM data: all)
CLASS_STATS_IMAGES = 1000


@dataclass
class TrainingData:
    train: object  # the training dataset (transforms of the current stage)
    val: object  # the validation dataset, raw pairs (evaluate() normalises and scores at the label's size)
    classes: list[str]
    palette: np.ndarray
    mean: list[float]
    std: list[float]
    stages: list[dict]  # the progressive stages, then {"until": 1.0, crop, scale} to the end
    class_weight: list[float] | None
    paste_classes: list[int]
    val_in_train: int  # validation images that are training images too

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def val_source(cfg: TrainConfig) -> dict:
    """build_dataset keywords of the validation data (the training dataset by default)."""
    if cfg.val_data and cfg.val_data != cfg.data:
        return {"name": cfg.val_data, "root": cfg.val_data_root, **cfg.val_data_options}
    return {"name": cfg.data, "root": cfg.val_data_root or cfg.data_root, **cfg.data_options, **cfg.val_data_options}


def stage_transforms(cfg: TrainConfig, stage: dict, mean, std):
    from fcnseg.data.transforms import train_transforms

    return train_transforms(stage["crop"], mean=mean, std=std, scale=tuple(stage["scale"]), hflip=cfg.hflip, rotate90=cfg.rotate90, color_jitter=cfg.color_jitter)


def training_data(cfg: TrainConfig, *, main: bool) -> TrainingData:
    """Builds and checks the datasets of ``cfg`` (on rank 0; the verdict is broadcast)."""
    from fcnseg.data import build_dataset
    from fcnseg.weights import preprocessing

    pre = preprocessing(cfg.backbone, cfg.weights or "imagenet")  # ImageNet statistics
    mean, std = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
    stages = [*cfg.progressive, {"until": 1.0, "crop": cfg.crop, "scale": cfg.scale}]
    train_ds = build_dataset(cfg.data, root=cfg.data_root, split=cfg.train_split, transforms=stage_transforms(cfg, stages[-1], mean, std), **dict(cfg.data_options))
    val_ds = build_dataset(**val_source(cfg), split=cfg.val_split, transforms=None)
    check_data(cfg, train_ds, val_ds, main=main)
    if tuple(val_ds.classes) != tuple(train_ds.classes):
        raise DataError(
            f"the training data ({cfg.data}/{cfg.train_split}) has classes {list(train_ds.classes)} but the "
            f"validation data ({val_source(cfg)['name']}/{cfg.val_split}) has {list(val_ds.classes)}"
        )
    classes = list(train_ds.classes)
    trained_on = {os.path.realpath(image) for image, _ in train_ds.samples}
    val_in_train = sum(os.path.realpath(image) in trained_on for image, _ in val_ds.samples)
    if val_in_train:
        log.warning(
            "%d of the %d validation images (%s) are also training images (%s): the validation "
            "scores of this run are not held-out figures",
            val_in_train, len(val_ds), cfg.val_split, cfg.train_split,
        )
    if cfg.preload:
        t0 = time.perf_counter()
        held = train_ds.preload()
        log.info("preloaded %d training pairs (%.0f MiB) in %.1fs", len(train_ds), held / 2**20, time.perf_counter() - t0)
    median = None  # median-frequency weights, computed once if anything needs them
    if cfg.class_weights != "none" or (cfg.copy_paste and cfg.paste_classes is None):
        from fcnseg.data.stats import median_frequency_weights

        median = median_frequency_weights(train_ds, max_images=CLASS_STATS_IMAGES)
        if len(train_ds) > CLASS_STATS_IMAGES:
            log.info("class frequencies counted on %d of the %d training masks, spread evenly", CLASS_STATS_IMAGES, len(train_ds))
    paste_classes: list[int] = []
    if cfg.copy_paste:
        paste_classes = resolve_paste_classes(cfg, classes, median)
        log.info("copy-paste (p=%g) of %s", cfg.copy_paste, ", ".join(classes[c] for c in paste_classes))
    weight = None
    if cfg.class_weights != "none":
        weight = median if cfg.class_weights == "median" else [math.sqrt(v) for v in median]
        what = "median-frequency" if cfg.class_weights == "median" else "square-root median-frequency"
        log.info("%s class weights: %s", what, ", ".join(f"{c}={v:.2f}" for c, v in zip(classes, weight, strict=True)))
    return TrainingData(train_ds, val_ds, classes, np.asarray(train_ds.palette, np.uint8), mean, std, stages, weight, paste_classes, val_in_train)


def resolve_paste_classes(cfg: TrainConfig, classes: list[str], median_weights: list[float] | None) -> list[int]:
    """``paste_classes`` as class indices: names or indices from the config, else the classes
    rarer than the median one (median-frequency weight above 1)."""
    names = cfg.paste_classes
    if names is None:
        return [c for c, w in enumerate(median_weights) if w > 1.0]
    out = []
    for name in names:
        if isinstance(name, int) or str(name).isdigit():
            c = int(name)
            if not 0 <= c < len(classes):
                raise ConfigError(f"paste_classes: class index {c} is outside 0..{len(classes) - 1} of {cfg.data}; classes: {', '.join(classes)}")
        elif name in classes:
            c = classes.index(name)
        else:
            raise ConfigError(f"paste_classes: {cfg.data} has no class {name!r}; its classes are {', '.join(classes)} (names or indices)")
        out.append(c)
    return sorted(set(out))


def check_data(cfg: TrainConfig, train_ds, val_ds, *, main: bool) -> None:
    """Runs the data checker on the splits used: bad files stop the run with the report,
    or with --skip-check are left out (and listed)."""
    from fcnseg.data.check import bad_paths, check_dataset, format_report

    problems = []
    if main:
        val = val_source(cfg)
        sources = [(cfg.data, cfg.data_root, cfg.train_split, cfg.data_options)]
        sources.append((val.pop("name"), val.pop("root"), cfg.val_split, val))
        for name, root, split, opts in sources:
            found = check_dataset(name, root, splits=[split], **opts)
            problems += [p for p in found if p not in problems]
    problems = ddp.broadcast_object(problems)
    if not problems:
        return
    report = format_report(problems)
    fatal = [p for p in problems if getattr(p, "fatal", False)]
    if fatal or not cfg.skip_check:
        log.error("%s", report)
        how = "fix them" if fatal else "fix them, or pass --skip-check to leave those files out"
        raise DataError(f"{cfg.data}: {len(problems)} problem(s) in the data, the first: {problems[0].message} (report above; `fcnseg data check` lists them); {how}")
    paths = bad_paths(problems)
    dropped = train_ds.exclude(paths) + val_ds.exclude(paths)
    log.warning("%s\n--skip-check: left out %d image/mask pair(s), listed above", report, dropped)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise DataError(f"{cfg.data}: no usable pairs left after --skip-check")


def train_loader(cfg: TrainConfig, data: TrainingData, sampler: EpochSampler, stage: int, device: torch.device) -> DataLoader:
    """The training loader of progressive stage ``stage`` (its transforms); built again when
    a stage ends (the persistent workers hold a copy of the dataset)."""
    data.train.transforms = stage_transforms(cfg, data.stages[stage], data.mean, data.std)
    return DataLoader(
        SeededDataset(data.train, cfg.seed),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,  # no re-fork and refill at each epoch
        # the loader's own base seed comes from this generator, not the global RNG
        generator=torch.Generator().manual_seed(cfg.seed + 1000 * stage),
    )
