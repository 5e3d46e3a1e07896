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
# median: median(freq) / freq(c) (Eigen & Fergus; SegNet); median_sqrt: its square root, a
# softer balance that trades some class-average accuracy for IoU (docs/experiments)
CLASS_WEIGHTS = ("none", "median", "median_sqrt")
UPSAMPLES = ("deconv", "bilinear", "unpool")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# minutes the zero-argument `fcnseg train` trains for, final validation included
DEFAULT_MINUTES = 3.0
# the groups of `fcnseg train --help`, in order
GROUPS = ("data", "model", "augmentation", "optimisation", "run")

# options that were removed (an ablation measured no gain; the figures stay in the experiment
# notes): key -> the value that meant "off". A config or checkpoint that holds the key at that
# value still loads (the key is dropped); any other value is an error that names it.
REMOVED = {
    "schedule_unit": "step",
    "freeze_schedule": [],
    "paste_weights": False,
    "balanced_crops": 0.0,
    "area_for_downscale": True,
    "context": None,
}


def option(default: Any, group: str, help: str | None = None, **cli: Any) -> Any:
    """A TrainConfig field with its command-line flag: ``group`` (a section of ``fcnseg
    train --help``), ``help``, and argparse keywords (``metavar``, ``choices``, ``nargs``,
    ``type`` of list items, ``const``; ``flag`` to spell it otherwise; ``flag=None``: no flag)."""
    meta = {"group": group, "help": help, **cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every training option with its default and its flag. The defaults are the
    zero-argument ``fcnseg train``: FCN-8s on a ResNet-18 trunk, trained from scratch on the
    built-in synthetic dataset for 8 epochs or ``DEFAULT_MINUTES`` (3), whichever ends first,
    on any two CPU cores; giving ``epochs`` without ``max_minutes`` lifts the budget."""

    # data (--data, --data-root and --data-option come from fcnseg.cli.data, shared with eval)
    data: str = option("synthetic", "data", flag=None)
    data_root: str | None = option(None, "data", flag=None)
    data_options: dict = option({}, "data", flag=None)
    train_split: str = option("train", "data", "the split to train on", metavar="S")
    val_split: str = option("val", "data", "the split to validate on", metavar="S")
    val_data: str | None = option(None, "data", "validate on another dataset (default: --data; e.g. the paper trains on SBD, validates on VOC seg11valid)", metavar="NAME")
    val_data_root: str | None = option(None, "data", "its folder", metavar="DIR")
    val_data_options: dict = option({}, "data", flag=None)
    skip_check: bool = option(False, "data", "leave out the files the data check lists instead of stopping")
    workers: int = option(0, "data", "data loader processes", metavar="N")
    preload: bool = option(False, "data", "decode the training pairs into memory once (small datasets)")
    # model
    model: str = option("fcn8s", "model", "fcn32s, fcn16s, fcn8s, fcn4s, seed", metavar="NAME")
    backbone: str = option("resnet18", "model", "vgg16, vgg16_bn, resnet18, resnet34, resnet50, resnet101", metavar="NAME")
    weights: str | None = option(None, "model", "pretrained backbone weights (none: random init)", metavar="imagenet|PATH")
    upsample: str = option("bilinear", "model", "the upsampling of the scores", choices=UPSAMPLES)
    align: str = option("same", "model", "same, or paper (the Caffe geometry: pad 100, crops 5/9/31)", choices=("same", "paper"))
    output_stride: int = option(32, "model", "8, 16 (dilated ResNets) or 32", metavar="S")
    init_from: str | None = option(None, "model", "copy the tensors whose name and shape match (staged FCN-32s → 16s → 8s)", metavar="CKPT")
    freeze_backbone: bool = option(False, "model", "train the head only (frozen BatchNorm statistics too)")
    zero_init_residual: bool = option(False, "model", "from scratch: start each ResNet block's residual branch at zero (its last BatchNorm scale 0)")
    # augmentation (train split only; masks are always resized NEAREST)
    crop: list = option([128, 128], "augmentation", "training crop: H [W]", nargs="+", type=int, metavar="PX")
    scale: list = option([1.0, 1.0], "augmentation", "random rescaling of training images before the crop (e.g. 0.5 2.0)", nargs=2, type=float, metavar=("MIN", "MAX"))
    hflip: bool = option(True, "augmentation", "random horizontal flips")
    rotate90: bool = option(False, "augmentation", "random rotations by 0, 90, 180 or 270 degrees (with --hflip all eight symmetries of the square): for data without an up, such as microscopy, aerial or satellite images")
    color_jitter: float = option(0.2, "augmentation", "brightness, contrast and saturation of training crops scaled by factors in [1 - S, 1 + S] (0: off)", metavar="S")
    copy_paste: float = option(0.0, "augmentation", "class copy-paste: with probability P a training crop receives, at the same place, the --paste-classes pixels of another crop of its batch (0: off)", metavar="P")
    paste_classes: list | None = option(None, "augmentation", "the classes --copy-paste moves, by name or index (default: those rarer than the median class)", nargs="+", metavar="NAME")
    # progressive resizing: earlier parts of the run on other crops/scales (e.g. smaller frames,
    # more epochs per second), each [{until, crop, scale}] with `until` the fraction of the run
    # (of max_minutes, else of the planned steps) it lasts to; crop/scale above apply after the last
    progressive: list = option([], "augmentation", "progressive resizing: train up to fraction F of the run on HxW crops of frames scaled MIN-MAX, then on --crop/--scale (e.g. 0.5:144x192:0.375-0.625)", nargs="+", metavar="F:HxW:MIN-MAX")
    # optimisation
    epochs: int = option(8, "optimisation", metavar="N")
    batch_size: int = option(8, "optimisation", "per process", metavar="B")
    accum_steps: int = option(1, "optimisation", "gradient accumulation", metavar="N")
    optimizer: str = option("adamw", "optimisation", choices=OPTIMIZERS)
    lr: float = option(2e-3, "optimisation", metavar="X")
    momentum: float = option(0.9, "optimisation", "SGD's", metavar="M")
    weight_decay: float = option(1e-4, "optimisation", "on weights, not on biases and norms", metavar="WD")
    schedule: str = option("poly", "optimisation", "the lr after warmup", choices=SCHEDULES)
    warmup_steps: int = option(20, "optimisation", metavar="N")
    clip_grad: float | None = option(None, "optimisation", "clip the gradient norm", metavar="NORM")
    class_weights: str = option("none", "optimisation", "median-frequency class weights of the loss", choices=CLASS_WEIGHTS)
    hard_pixels: float = option(1.0, "optimisation", "average the loss over the hardest fraction F of each batch's pixels (bootstrapped cross-entropy; 1: all)", metavar="F")
    aux_loss: float = option(0.0, "optimisation", "weight of an auxiliary stride-16 loss (0: off)", metavar="W")
    lovasz: float = option(0.0, "optimisation", "add W x the Lovász-softmax loss (a mean-IU surrogate; Berman et al. 2018) to the cross-entropy (0: off)", metavar="W")
    ema: float = option(0.0, "optimisation", "validate and save an exponential moving average of the weights with decay D per step (e.g. 0.999; 0: off)", metavar="D")
    # numerics / hardware
    precision: str = option("auto", "run", "auto: bf16 where the CPU or GPU has it natively, else fp32 (fp16: GPUs)", choices=PRECISIONS)
    device: str = option("auto", "run", "auto, cpu, cuda, cuda:1", metavar="DEV")
    compile: bool = option(False, "run", "torch.compile the model")
    seed: int = option(0, "run", metavar="S")
    # run control and output
    # the zero-argument run's budget (any 2-core CPU, fp32-only ones included); an --epochs
    # given without --max-minutes lifts it (resolve_config)
    max_minutes: float | None = option(DEFAULT_MINUTES, "run", f"wall-clock budget, final validation (if any) included; the lr schedule fits it (default {DEFAULT_MINUTES:g} unless --epochs is given; 0: none, e.g. to run a config's recipe for --epochs)", metavar="M")
    eval_every: int = option(1, "run", "validate every N epochs (0: never: the whole budget trains, best.pt is the final model; score it with `fcnseg eval`)", metavar="N")
    eval_batch_size: int = option(1, "run", metavar="B")
    eval_tta: str | None = option(None, "run", "test-time augmentation of validation (and the default of `fcnseg eval`/`predict` for this run), e.g. 'flip,scales=0.75,1,1.25'; 'none': off; 'auto': chosen on the validation split at the end of the run, kept only where it pays", metavar="SPEC")
    eval_crf: str | None = option(None, "run", "CRF refinement of validation (and the default of `fcnseg eval`/`predict` for this run): 'default' or key=value pairs, e.g. 'appearance=2,theta_b=5'; 'none': off; 'auto': chosen with --eval-tta auto", metavar="SPEC")
    ckpt_every_steps: int = option(0, "run", "also write last.pt every N steps (0: at epoch ends only, at most ~5 %% of the time)", metavar="N")
    log_every: int = option(20, "run", "steps between loss reads (each read is a host sync)", metavar="N")
    num_samples: int = option(4, "run", "images in samples/epoch_N.png", metavar="N")
    tensorboard: bool = option(True, "run", "write TensorBoard event files")
    out: str | None = option(None, "run", "run directory (default runs/<name or timestamp>)", metavar="DIR")
    name: str | None = option(None, "run", "run name under runs/")
    resume: str | None = option(None, "run", "continue from a checkpoint (default OUT/last.pt)", metavar="PATH", nargs="?", const="auto")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS: dict[str, Any] = typing.get_type_hints(TrainConfig)


def default_config() -> dict:
    return TrainConfig().to_dict()


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"unknown config key {key!r} in {source}{hint}; the valid keys are the `fcnseg train --help` "
        "flags, underscored (fcnseg.config.TrainConfig)"
    )


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
        if key in REMOVED:
            _check_removed(key, value, source)
            continue
        if key not in FIELDS:
            raise _unknown_key(key, source)
        value = _coerce(key, value, source)
        if key in ("data_options", "val_data_options") and value:  # dataset options add up, the later source wins per key
            value = {**out.get(key, {}), **value}
        out[key] = value
    return out


def migrate(cfg: dict, source: str) -> dict:
    """The one place where configs of earlier versions become today's: a checkpoint's or a
    file's keys with the removed options dropped (accepted only at the value that meant "off";
    any other value is a ConfigError that names it) and the keys added since filled with their
    defaults."""
    out = {}
    for key, value in cfg.items():
        if key in REMOVED:
            _check_removed(key, value, source)
        elif key in FIELDS:
            out[key] = value
    return {**default_config(), **out}


def _check_removed(key: str, value: Any, source: str) -> None:
    """A removed option is accepted only at the value that meant "off" (then dropped)."""
    off = REMOVED[key]
    if not (value == off or (isinstance(off, list) and not value)):
        raise ConfigError(f"{key} was removed from fcnseg (an ablation measured no gain; docs/experiments has the figures); drop {key}: {value!r} from {source}")


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
        if not isinstance(key, str) or key.replace("-", "_") not in {*FIELDS, *REMOVED}:
            raise _unknown_key(str(key), str(path))
    return data


def resolve_config(overrides: dict | TrainConfig | None = None, *, config_file: str | os.PathLike | None = None, base: dict | TrainConfig | None = None) -> TrainConfig:
    """Defaults (or ``base``, e.g. a checkpoint's config) < ``config_file`` < ``overrides``,
    validated: the ``TrainConfig`` a run reads its options from."""
    if isinstance(base, TrainConfig):
        base = base.to_dict()
    cfg = migrate(base, "the checkpoint's config") if base is not None else default_config()
    given: set[str] = set()  # the keys a file or the caller set
    if config_file is not None:
        loaded = load_yaml(config_file)
        given |= set(loaded)
        cfg = merge(cfg, loaded, str(config_file))
    if isinstance(overrides, TrainConfig):
        overrides = overrides.to_dict()
    if overrides:
        if "config" in overrides:  # train({"config": "file.yaml", ...}) as a notebook shortcut
            overrides = dict(overrides)
            loaded = load_yaml(overrides["config"])
            given |= set(loaded)
            cfg = merge(cfg, loaded, str(overrides.pop("config")))
        given |= set(overrides)
        cfg = merge(cfg, overrides, "the given options")
    if base is None and "epochs" in given and "max_minutes" not in given:
        cfg["max_minutes"] = None  # the default budget is the zero-argument run's: --epochs N runs N epochs
    if cfg["max_minutes"] == 0:  # 0 lifts a time budget (e.g. a config file's): --epochs decides
        cfg["max_minutes"] = None
    validate(cfg)
    return TrainConfig(**cfg)


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


def validate(cfg: dict) -> None:
    """Range and choice checks that need no model or dataset."""

    def choice(key: str, choices: tuple) -> None:
        if cfg[key] not in choices:
            raise ConfigError(f"unknown {key} {cfg[key]!r}; choose one of {', '.join(choices)}")

    choice("optimizer", OPTIMIZERS)
    choice("schedule", SCHEDULES)
    choice("class_weights", CLASS_WEIGHTS)
    choice("upsample", UPSAMPLES)
    choice("align", ("same", "paper"))
    choice("precision", PRECISIONS)
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
    from fcnseg.models import REMOVED_MODELS

    for key in ("model", "backbone"):
        if cfg[key] in REMOVED_MODELS:
            raise ConfigError(f"{key} {cfg[key]!r} was removed from fcnseg (an ablation measured no gain; docs/experiments has the figures); {REMOVED_MODELS[cfg[key]]}")
    from fcnseg.inference.specs import parse_crf, parse_tta, run_crf, run_tta

    parse_tta(run_tta(cfg["eval_tta"], cfg["scale"]))  # a bad spec fails now, not at the first validation
    parse_crf(run_crf(cfg["eval_crf"]))


def save_yaml(cfg: dict | TrainConfig, path: str | os.PathLike) -> None:
    """Writes ``cfg`` as YAML atomically; ``OutputError`` naming the file when it cannot."""
    from fcnseg.checkpoint import atomic_write

    text = yaml.safe_dump(cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg, sort_keys=False).encode()
    atomic_write(path, lambda f: f.write(text), what="run config", fix="or train into another --out")
