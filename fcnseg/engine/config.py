"""The training configuration: one dataclass holds every default; YAML files and flags override.

Precedence, lowest first: ``TrainConfig`` defaults < a YAML file (``--config``) < explicit
command-line flags. YAML keys are the field names (underscored, e.g. ``batch_size``); an
unknown key is a ``ConfigError`` that names it. The resolved config is saved as
``config.yaml`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fcnseg.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("poly", "cosine", "constant")
# what the lr schedule counts: optimizer steps, or steps weighted by their crop's pixels
# (a progressive stage at a quarter of the pixels advances it a quarter step: ~wall time)
SCHEDULE_UNITS = ("step", "pixels")
# median: median(freq) / freq(c) (Eigen & Fergus; SegNet); median_sqrt: its square root, a
# softer balance that trades some class-average accuracy for IoU (docs/camvid.md)
CLASS_WEIGHTS = ("none", "median", "median_sqrt")


@dataclass
class TrainConfig:
    """Every training option with its default. The defaults are the zero-argument
    ``fcnseg train``: FCN-8s on a ResNet-18 trunk, trained from scratch on the built-in
    synthetic dataset in about two minutes on two CPU cores."""

    # data
    data: str = "synthetic"
    data_root: str | None = None
    data_options: dict = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    # validate on another dataset (e.g. the paper: train on SBD, validate on VOC seg11valid)
    val_data: str | None = None
    val_data_root: str | None = None
    val_data_options: dict = field(default_factory=dict)
    skip_check: bool = False
    workers: int = 0
    preload: bool = False  # decode the training pairs into memory once (small datasets)
    # model
    model: str = "fcn8s"
    backbone: str = "resnet18"
    weights: str | None = None  # "imagenet", a weights file, or None (random init)
    upsample: str = "bilinear"
    align: str = "same"
    output_stride: int = 32
    context: str | None = None  # "ppm": a pyramid pooling module on the last map (FCN models)
    init_from: str | None = None  # a checkpoint whose name+shape-matching tensors are copied
    freeze_backbone: bool = False
    # late freezing (FreezeOut, Brock et al. 2017, in steps): [{at, modules}], the parameters of
    # `modules` (dotted names, e.g. backbone.layer1) stop training at fraction `at` of the run
    # (the clock of `progressive`); no gradient flows below the lowest trainable layer
    freeze_schedule: list = field(default_factory=list)
    zero_init_residual: bool = False  # from scratch: each ResNet block starts as the identity
    # augmentation (train split only; masks are always resized NEAREST)
    crop: list = field(default_factory=lambda: [128, 128])  # [H, W]
    scale: list = field(default_factory=lambda: [1.0, 1.0])  # random rescaling; recipes use e.g. [0.5, 2.0]
    area_for_downscale: bool = True  # frames the random scale shrinks: INTER_AREA (False: bilinear, ~1 ms a 360x480 frame cheaper)
    hflip: bool = True
    color_jitter: float = 0.2
    balanced_crops: float = 0.0  # fraction of crops placed around a pixel of a class drawn uniformly from the frame's classes
    copy_paste: float = 0.0  # probability that a crop receives the paste_classes pixels of another crop of its batch
    paste_classes: list | None = None  # class names (or indices) copy_paste moves; None: the classes rarer than the median
    paste_weights: bool = False  # median-frequency class weights of the masks as copy_paste changes them (pasted classes weigh less)
    # progressive resizing: earlier parts of the run on other crops/scales (e.g. smaller frames,
    # more epochs per second), each [{until, crop, scale}] with `until` the fraction of the run
    # (of max_minutes, else of the planned steps) it lasts to; crop/scale above apply after the last
    progressive: list = field(default_factory=list)
    # optimisation
    epochs: int = 8
    batch_size: int = 8
    accum_steps: int = 1
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    schedule_unit: str = "step"  # or "pixels" (see SCHEDULE_UNITS; matters with progressive)
    warmup_steps: int = 20
    clip_grad: float | None = None
    class_weights: str = "none"
    hard_pixels: float = 1.0  # < 1: the loss averages only this fraction of hardest pixels
    aux_loss: float = 0.0  # weight of an auxiliary stride-16 loss; 0 = off
    lovasz: float = 0.0  # weight of a Lovász-softmax (mean-IU surrogate) loss added to the cross-entropy; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, which validation and checkpoints use; 0 = off
    # numerics / hardware
    precision: str = "auto"
    device: str = "auto"
    compile: bool = False
    seed: int = 0
    # run control and output
    max_minutes: float | None = None
    eval_every: int = 1  # epochs; 0: never (no validation in the run: the whole budget trains, best.pt is the final model, `fcnseg eval` scores it)
    eval_batch_size: int = 1
    eval_tta: str | None = None  # default TTA of `fcnseg eval/predict` on this run's checkpoints, e.g. "flip"
    eval_crf: str | None = None  # default CRF refinement of validation and `fcnseg eval/predict`, e.g. "default"; see fcnseg.engine.crf
    ckpt_every_steps: int = 0  # 0: last.pt at epoch ends only
    log_every: int = 20  # steps between loss reads (each read is a host sync)
    num_samples: int = 4  # images in samples/epoch_N.png
    tensorboard: bool = True
    out: str | None = None  # run directory; default runs/<name or timestamp>
    name: str | None = None
    resume: str | None = None  # a checkpoint path, or "auto" for OUT/last.pt

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS: dict[str, Any] = typing.get_type_hints(TrainConfig)


def default_config() -> dict:
    return TrainConfig().to_dict()


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} in {source}{hint}; valid keys are the TrainConfig fields: {', '.join(FIELDS)}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Converts ``value`` to the type of field ``key`` (YAML reads ``1e-4`` as a string)."""
    hint = FIELDS[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and base is not str):
        if optional:
            return None
        raise ConfigError(f"{source}: {key} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if base is list:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return [value]
            if not isinstance(value, list | tuple):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        name = getattr(base, "__name__", str(base))
        raise ConfigError(f"{source}: {key} must be a {name}, got {value!r}") from None
    return value


def merge(base: dict, overrides: dict, source: str) -> dict:
    """A copy of ``base`` with ``overrides`` applied; unknown keys raise ConfigError.
    ``data_options`` dicts are merged key by key; every other key is replaced."""
    out = dict(base)
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise _unknown_key(key, source)
        value = _coerce(key, value, source)
        if key in ("data_options", "val_data_options") and value:  # dataset options add up, the later source wins per key
            value = {**out.get(key, {}), **value}
        out[key] = value
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    """Reads a YAML mapping of TrainConfig keys (values are not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or key.replace("-", "_") not in FIELDS:
            raise _unknown_key(str(key), str(path))
    return data


def resolve_config(overrides: dict | TrainConfig | None = None, *, config_file: str | os.PathLike | None = None, base: dict | None = None) -> dict:
    """Defaults (or ``base``, e.g. a checkpoint's config) < ``config_file`` < ``overrides``,
    validated. Returns a plain dict with every TrainConfig key."""
    cfg = dict(base) if base is not None else default_config()
    # a checkpoint from an older version may lack newer keys
    for key, value in default_config().items():
        cfg.setdefault(key, value)
    cfg = {k: v for k, v in cfg.items() if k in FIELDS}
    if config_file is not None:
        cfg = merge(cfg, load_yaml(config_file), str(config_file))
    if isinstance(overrides, TrainConfig):
        overrides = overrides.to_dict()
    if overrides:
        if "config" in overrides:  # train({"config": "file.yaml", ...}) as a notebook shortcut
            overrides = dict(overrides)
            cfg = merge(cfg, load_yaml(overrides["config"]), str(overrides.pop("config")))
        cfg = merge(cfg, overrides, "the given options")
    if cfg["max_minutes"] == 0:  # 0 lifts a time budget (e.g. a config file's): --epochs decides
        cfg["max_minutes"] = None
    validate(cfg)
    return cfg


def parse_stage(spec: str | dict) -> dict:
    """One ``progressive`` stage from ``{"until": F, "crop": [H, W], "scale": [MIN, MAX]}`` or
    the flag form ``"F:HxW:MIN-MAX"`` (e.g. ``0.5:144x192:0.375-0.625``), checked."""
    form = "a progressive stage is {until: F, crop: [H, W], scale: [MIN, MAX]} or 'F:HxW:MIN-MAX' (e.g. 0.5:144x192:0.375-0.625)"
    try:
        if isinstance(spec, str):
            until, crop, scale = spec.split(":")
            spec = {"until": float(until), "crop": [int(c) for c in crop.lower().split("x")], "scale": [float(v) for v in scale.split("-")]}
        if not isinstance(spec, dict) or set(spec) != {"until", "crop", "scale"}:
            raise ValueError
        crop = [spec["crop"]] if isinstance(spec["crop"], int) else list(spec["crop"])
        until, scale = float(spec["until"]), [float(v) for v in spec["scale"]]
        crop = crop * 2 if len(crop) == 1 else crop
        if len(crop) != 2 or not all(float(c).is_integer() and c > 0 for c in crop) or len(scale) != 2:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{form}; got {spec!r}") from None
    if not 0 < until < 1 or not 0 < scale[0] <= scale[1]:
        raise ConfigError(f"{form}, with 0 < F < 1 and 0 < MIN <= MAX; got {spec!r}")
    return {"until": until, "crop": [int(c) for c in crop], "scale": scale}


def parse_freeze(spec: str | dict) -> dict:
    """One ``freeze_schedule`` entry from ``{"at": F, "modules": [NAME, ...]}`` or the flag
    form ``"F:NAME,NAME"`` (e.g. ``0.5:backbone.conv1,backbone.bn1,backbone.layer1``), checked
    (the names are checked against the model when it is built)."""
    form = "a freeze_schedule entry is {at: F, modules: [NAME, ...]} or 'F:NAME,NAME' (e.g. 0.5:backbone.conv1,backbone.layer1)"
    try:
        if isinstance(spec, str):
            at, names = spec.split(":")
            spec = {"at": float(at), "modules": [n for n in names.split(",") if n]}
        if not isinstance(spec, dict) or set(spec) != {"at", "modules"}:
            raise ValueError
        at = float(spec["at"])
        modules = [spec["modules"]] if isinstance(spec["modules"], str) else list(spec["modules"])
        if not modules or not all(isinstance(m, str) and m for m in modules):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{form}; got {spec!r}") from None
    if not 0 <= at < 1:
        raise ConfigError(f"{form}, with 0 <= F < 1 (the fraction of the run after which the modules stop training); got {spec!r}")
    return {"at": at, "modules": modules}


def validate(cfg: dict) -> None:
    """Range and choice checks that need no model or dataset."""

    def choice(key: str, choices: tuple) -> None:
        if cfg[key] not in choices:
            raise ConfigError(f"unknown {key} {cfg[key]!r}; choose one of {', '.join(choices)}")

    choice("optimizer", OPTIMIZERS)
    choice("schedule", SCHEDULES)
    choice("schedule_unit", SCHEDULE_UNITS)
    choice("class_weights", CLASS_WEIGHTS)
    crop = cfg["crop"]
    if len(crop) == 1:
        crop = [crop[0], crop[0]]
    if len(crop) != 2 or not all(isinstance(c, int | float) and float(c).is_integer() and c > 0 for c in crop):
        raise ConfigError(f"crop must be one or two positive integers (H [W]), got {cfg['crop']!r}")
    cfg["crop"] = [int(c) for c in crop]
    if len(cfg["scale"]) != 2 or not 0 < cfg["scale"][0] <= cfg["scale"][1]:
        raise ConfigError(f"scale must be [min, max] with 0 < min <= max, got {cfg['scale']!r}")
    cfg["scale"] = [float(s) for s in cfg["scale"]]
    cfg["progressive"] = [parse_stage(stage) for stage in cfg["progressive"]]
    untils = [stage["until"] for stage in cfg["progressive"]]
    if untils != sorted(set(untils)):
        raise ConfigError(f"progressive stages must be in order of `until`, each later than the one before; got {untils}")
    cfg["freeze_schedule"] = [parse_freeze(entry) for entry in cfg["freeze_schedule"]]
    ats = [entry["at"] for entry in cfg["freeze_schedule"]]
    if ats != sorted(ats):
        raise ConfigError(f"freeze_schedule entries must be in order of `at`; got {ats}")
    if cfg["freeze_schedule"] and cfg["freeze_backbone"]:
        raise ConfigError("freeze_backbone freezes the whole backbone from the start; freeze_schedule then has nothing to add (drop one of the two)")
    for key in ("epochs", "batch_size", "accum_steps", "log_every", "eval_batch_size"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    for key in ("workers", "warmup_steps", "ckpt_every_steps", "num_samples", "eval_every"):
        if cfg[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg['lr']}")
    if cfg["weight_decay"] < 0 or cfg["aux_loss"] < 0 or cfg["lovasz"] < 0 or not 0 <= cfg["momentum"] < 1:
        raise ConfigError("weight_decay, aux_loss and lovasz must be >= 0 and momentum in [0, 1)")
    if not 0 <= cfg["balanced_crops"] <= 1:
        raise ConfigError(f"balanced_crops is the fraction of class-centred training crops: in [0, 1], got {cfg['balanced_crops']}")
    if cfg["context"] == "ppm" and cfg["batch_size"] < 2:
        raise ConfigError(f"context 'ppm' batch-normalises its global (1x1) bin over the batch, which needs batch_size >= 2 per process in training; got {cfg['batch_size']} (raise --batch-size or drop --context)")
    if not 0 <= cfg["color_jitter"] < 1:
        raise ConfigError(f"color_jitter scales brightness, contrast and saturation by factors in [1 - S, 1 + S]: S in [0, 1), got {cfg['color_jitter']}")
    if not 0 <= cfg["copy_paste"] <= 1:
        raise ConfigError(f"copy_paste is the probability that a training crop receives pasted pixels: in [0, 1], got {cfg['copy_paste']}")
    if not 0 < cfg["hard_pixels"] <= 1:
        raise ConfigError(f"hard_pixels is the fraction of pixels the loss keeps: in (0, 1], got {cfg['hard_pixels']}")
    if not 0 <= cfg["ema"] < 1:
        raise ConfigError(f"ema is the decay of the weight average per step: in [0, 1) (0: off, e.g. 0.999), got {cfg['ema']}")
    if cfg["zero_init_residual"] and cfg["weights"]:
        raise ConfigError(f"zero_init_residual is an initialisation for training from scratch; with weights={cfg['weights']!r} it would erase the pretrained residual branches (drop one of the two)")
    if cfg["clip_grad"] is not None and cfg["clip_grad"] <= 0:
        raise ConfigError(f"clip_grad must be > 0 (or none), got {cfg['clip_grad']}")
    if cfg["max_minutes"] is not None and cfg["max_minutes"] < 0:
        raise ConfigError(f"max_minutes must be > 0 (or 0: no time budget), got {cfg['max_minutes']}")
    from fcnseg.engine.inference import parse_tta

    parse_tta(cfg["eval_tta"])  # a bad spec fails now, not at the first validation
    from fcnseg.engine.crf import parse_crf

    parse_crf(cfg["eval_crf"])


def save_yaml(cfg: dict, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
