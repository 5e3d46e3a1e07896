"""Training: ``train(cfg) -> run directory``.

Reads top to bottom: resolve the config → set up devices/DDP → data (checked) → model,
optimizer, schedule → the epoch loop (``_train_epoch``) with validation at epoch ends → the
final evaluation and ``metrics.json``.

Reproducibility: the data order is a pure function of (seed, epoch) (``EpochSampler``, a
``DistributedSampler`` seeded per epoch) and each sample's augmentation a pure function of
(seed, epoch, index) (``SeededDataset``), whatever the worker. A checkpoint therefore only
needs the position in the epoch: resuming skips the consumed batches without replaying the
loader, and on CPU a resumed run reproduces an uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fcnseg.engine import distributed as ddp
from fcnseg.engine.checkpoint import (
    check_output_dir,
    ensure_output_dir,
    load_checkpoint,
    save_checkpoint,
)
from fcnseg.engine.config import TrainConfig, resolve_config, save_yaml
from fcnseg.engine.precision import Precision, resolve_device, resolve_precision
from fcnseg.errors import ConfigError, DataError

log = logging.getLogger("fcnseg.train")

IGNORE_INDEX = 255


# --------------------------------------------------------------------------- schedule


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "poly",
    power: float = 0.9,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Linear warmup ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps``,
    then over the remaining steps ``poly``: ``base_lr * (1 - t) ** power`` or ``cosine``:
    ``base_lr * (1 + cos(pi t)) / 2`` with ``t`` going 0 → 1; ``constant``: ``base_lr``.
    Steps past ``total_steps`` get the final value (0 for poly/cosine)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "poly":
        return base_lr * (1.0 - t) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"unknown schedule {schedule!r}; choose poly, cosine or constant")


class LRSchedule:
    """Sets every param group's lr to ``lr_at(step) * group["lr_scale"]``.

    ``total_steps`` may be revised during a run (a ``max_minutes`` budget is turned into a
    step count from the measured speed); it is part of the state dict."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str) -> None:
        self.optimizer = optimizer
        self.base_lr, self.total_steps = base_lr, int(total_steps)
        self.warmup_steps, self.schedule = warmup_steps, schedule
        self.last_lr = base_lr

    def apply(self, step: int) -> float:
        lr = lr_at(step, base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = state["total_steps"]


# --------------------------------------------------------------------------- optimisation


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights of convs/linears (``ndim >= 2``) with
    ``weight_decay``, and biases and normalisation weights (``ndim <= 1``) without.
    Empty groups are left out."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], *, name: str, lr: float, momentum: float, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum (the paper), Adam (the tutorial) or AdamW; the fused kernels where
    this torch build has them for the device, else the foreach ones."""
    if not groups:
        raise ConfigError("no trainable parameters (is the whole model frozen?)")
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    cls = classes[name]
    kwargs: dict = {"lr": lr}
    if name == "sgd":
        kwargs["momentum"] = momentum
    for extra in ({"fused": True}, {"foreach": True}, {}):
        try:
            opt = cls(groups, **kwargs, **extra)
        except (RuntimeError, TypeError, ValueError):
            continue
        if extra.get("fused") and device.type not in ("cuda", "cpu"):
            continue
        return opt
    raise AssertionError("unreachable")  # pragma: no cover


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
# float32); docs/camvid.md (session 16) has the timings that chose it
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
    logits fit in cache anyway, 21 instead of 17 (the step unchanged; docs/camvid.md)."""
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


# --------------------------------------------------------------------------- weight average


def ema_average(decay: float):
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: an exponential moving
    average of the weights whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after
    ``n`` updates (as TensorFlow's and timm's EMA do), so a short run's average is not
    dominated by its random initial weights. Integer buffers (BatchNorm's batch counter)
    follow the model."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            torch._foreach_copy_(averaged, current)

    return update


# --------------------------------------------------------------------------- data order


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _reseed_transforms(tf, seed: int) -> None:
    """Reseeds every albumentations pipeline inside ``tf`` (fcnseg.data.transforms' Compose
    of Albu ops) from ``seed``; each op gets its own stream."""
    stack, k = [tf], 0
    while stack:
        obj = stack.pop()
        compose = getattr(obj, "compose", None)
        if compose is not None and hasattr(compose, "set_random_seed"):
            compose.set_random_seed((seed + 7919 * k) % 2**32)
            if hasattr(obj, "_pid"):  # tell Albu not to reseed itself on first use here
                obj._pid = os.getpid()
            k += 1
        elif hasattr(obj, "set_random_seed"):
            obj.set_random_seed((seed + 7919 * k) % 2**32)
            k += 1
        sub = getattr(obj, "transforms", None)
        if isinstance(sub, list | tuple):
            stack.extend(reversed(sub))


class SeededDataset(Dataset):
    """Wraps a dataset so item ``(epoch, i)`` is ``dataset[i]`` with every random number
    the transforms draw seeded from (seed, epoch, i): the same sample on any worker, in any
    order, after any resume. The global RNGs are restored afterwards."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(s)
                np.random.seed(s)
                torch.manual_seed(s)
                _reseed_transforms(getattr(self.dataset, "transforms", None), s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled per epoch by ``set_epoch``, sharded over ranks)
    that yields ``(epoch, index)`` keys for ``SeededDataset`` and can start ``start``
    samples into this rank's share of the epoch (resuming mid-epoch)."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


# --------------------------------------------------------------------------- model pieces


class _TrainNet(nn.Module):
    """The model plus, when asked, an auxiliary 1x1 score layer on the backbone's stride-16
    feature (read with a forward hook, so the model itself is unchanged).
    ``forward(x (N, 3, H, W)) -> (logits (N, K, H, W), aux logits (N, K, H, W) or None)``."""

    def __init__(self, model: nn.Module, num_classes: int, aux: bool) -> None:
        super().__init__()
        self.model = model
        self.aux_head: nn.Module | None = None
        self._aux_key: str | None = None
        self._feature: torch.Tensor | None = None
        if aux:
            backbone = getattr(model, "backbone", None)
            strides = getattr(backbone, "strides", {}) or {}
            channels = getattr(backbone, "out_channels", {}) or {}
            keys = [k for k in ("pool4", "conv5", "layer3") if strides.get(k) == 16 and k in channels]
            keys += [k for k, s in strides.items() if s == 16 and k in channels and k not in keys]
            if not keys:
                raise ConfigError(f"aux_loss needs a backbone with a stride-16 feature map; {type(backbone).__name__} has strides {strides} (set aux_loss: 0)")
            self._aux_key = keys[0]
            self.aux_head = nn.Conv2d(channels[self._aux_key], num_classes, 1)
            backbone.register_forward_hook(self._grab)

    def _grab(self, module: nn.Module, inputs, output) -> None:
        if isinstance(output, dict) and self._aux_key in output:
            self._feature = output[self._aux_key]

    def forward(self, x: torch.Tensor, coarse: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.model(x, coarse=True) if coarse else self.model(x)
        if self.aux_head is None or not self.training:
            return logits, None
        feature, self._feature = self._feature, None
        if feature is None:
            raise RuntimeError("the backbone did not return the stride-16 feature for aux_loss")
        aux = self.aux_head(feature)
        return logits, F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_matching(model: nn.Module, state: dict) -> tuple[list[str], list[str], list[str]]:
    """Copies every tensor of ``state`` whose name and shape match one of ``model``'s.
    Returns (loaded, left at their initialisation, unused names of ``state``)."""
    own = model.state_dict()
    loaded, left = [], []
    with torch.no_grad():
        for name, tensor in own.items():
            src = state.get(name)
            if src is not None and tuple(src.shape) == tuple(tensor.shape):
                tensor.copy_(src)
                loaded.append(name)
            else:
                left.append(name)
    unused = [k for k in state if k not in own or tuple(state[k].shape) != tuple(own[k].shape)]
    return loaded, left, unused


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# --------------------------------------------------------------------------- the run


def _find_resume(cfg: dict) -> Path:
    """The checkpoint ``resume`` names: a path, or ``auto`` → OUT/last.pt (OUT: ``out``, or
    the newest run under runs/ with a last.pt)."""
    if cfg["resume"] != "auto":
        return Path(cfg["resume"])
    if cfg["out"]:
        return Path(cfg["out"]) / "last.pt"
    candidates = sorted(Path("runs").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume without a path needs --out RUN_DIR (or a run under runs/ with a last.pt)")
    return candidates[-1]


def _new_run_dir(cfg: dict) -> Path:
    if cfg["out"]:
        return Path(cfg["out"])
    name = cfg["name"] or datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / name
    k = 1
    while path.exists() and not cfg["name"]:
        path = Path("runs") / f"{name}-{k}"
        k += 1
    return path


class _Trainer:
    """The state of one run. ``train()`` builds it and calls ``run()``."""

    def __init__(self, cfg: dict, ckpt: dict | None) -> None:
        self.cfg, self.ckpt = cfg, ckpt
        self.t_start = time.monotonic() - (ckpt.get("train_time_s", 0.0) if ckpt else 0.0)
        device = resolve_device(cfg["device"])
        self.dist = ddp.setup_distributed(device)
        self.device = ddp.local_device(device, self.dist)
        self.main = self.dist.is_main
        if not self.main:
            log.setLevel(logging.WARNING)
        self.precision: Precision = resolve_precision(cfg["precision"], self.device)
        torch.manual_seed(cfg["seed"])
        random.seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        self.run_dir = Path(ddp.broadcast_object(str(_new_run_dir(cfg))))
        cfg["out"] = str(self.run_dir)
        check_output_dir(self.run_dir)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        self._build_data()
        self._build_model()
        spe = self.steps_per_epoch
        self.planned_steps = cfg["epochs"] * spe
        groups = param_groups(self.net, cfg["weight_decay"])
        self.optimizer = build_optimizer(groups, name=cfg["optimizer"], lr=cfg["lr"], momentum=cfg["momentum"], device=self.device)
        self.schedule = LRSchedule(self.optimizer, base_lr=cfg["lr"], total_steps=self._planned_units(), warmup_steps=cfg["warmup_steps"], schedule=cfg["schedule"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.position = 0.0  # where the lr schedule is: steps, or pixel-weighted steps (schedule_unit)
        self.resumed_total: int | None = None
        self.best_miou: float = -math.inf
        self.best: dict | None = None
        self.last_eval: dict | None = None
        self.events: list[dict] = []
        if self.ckpt is not None:
            self._restore(self.ckpt)
            if not cfg["max_minutes"]:  # --epochs may have been changed for the rest of the run
                self.schedule.total_steps = self._planned_units()
        self.ckpt = None  # free the memory
        self.total_steps = self.planned_steps  # revised from the measured speed under max_minutes
        if cfg["max_minutes"] and self.resumed_total is not None:
            self.total_steps = int(self.resumed_total)

        self._wrap()

        if self.main:
            ensure_output_dir(self.run_dir)
            save_yaml(cfg, self.run_dir / "config.yaml")
            self._open_logs()
        ddp.barrier()

    def _wrap(self) -> None:
        """``train_net``: the net as the step runs it (compiled, DDP-wrapped); wrapped again
        when freeze_schedule changes which parameters train (DDP registers them at wrap time)."""
        self.train_net: nn.Module = self.net
        if self.cfg["compile"]:
            self.train_net = torch.compile(self.train_net)
        if self.dist.enabled:
            self.train_net = nn.parallel.DistributedDataParallel(self.train_net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_data(self) -> None:
        from fcnseg.data import build_dataset
        from fcnseg.weights import preprocessing

        cfg = self.cfg
        pre = preprocessing(cfg["backbone"], cfg["weights"] or "imagenet")  # ImageNet statistics
        self.mean, self.std = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
        # the stages of the run: the progressive ones, then the main crop/scale to the end
        self.stages = [*cfg["progressive"], {"until": 1.0, "crop": cfg["crop"], "scale": cfg["scale"]}]
        self.stage = 0
        tf = self._stage_transforms(self.stages[-1])
        opts = dict(cfg["data_options"])
        self.train_ds = build_dataset(cfg["data"], root=cfg["data_root"], split=cfg["train_split"], transforms=tf, **opts)
        # raw pairs: evaluate() normalises with mean/std and scores at the label's own size
        self.val_ds = build_dataset(**self._val_source(), split=cfg["val_split"], transforms=None)
        self._check_data()
        self.num_classes = int(self.train_ds.num_classes)
        if tuple(self.val_ds.classes) != tuple(self.train_ds.classes):
            raise DataError(
                f"the training data ({cfg['data']}/{cfg['train_split']}) has classes {list(self.train_ds.classes)} but the "
                f"validation data ({self._val_source()['name']}/{cfg['val_split']}) has {list(self.val_ds.classes)}"
            )
        self.classes = list(self.train_ds.classes)
        self.palette = np.asarray(self.train_ds.palette, np.uint8)
        trained_on = {os.path.realpath(image) for image, _ in self.train_ds.samples}
        self.val_in_train = sum(os.path.realpath(image) in trained_on for image, _ in self.val_ds.samples)
        if self.val_in_train:
            log.warning(
                "%d of the %d validation images (%s) are also training images (%s): the validation "
                "scores of this run are not held-out figures",
                self.val_in_train, len(self.val_ds), cfg["val_split"], cfg["train_split"],
            )

        if cfg["preload"]:
            t0 = time.perf_counter()
            held = self.train_ds.preload()
            log.info("preloaded %d training pairs (%.0f MiB) in %.1fs", len(self.train_ds), held / 2**20, time.perf_counter() - t0)
        self.sampler = EpochSampler(self.train_ds, num_replicas=self.dist.world_size, rank=self.dist.rank, seed=cfg["seed"])
        self.batches_per_epoch = self.sampler.num_samples // cfg["batch_size"]
        self.steps_per_epoch = self.batches_per_epoch // cfg["accum_steps"]
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{cfg['data']}/{cfg['train_split']} has {len(self.train_ds)} images: fewer than one "
                f"optimizer step of batch_size {cfg['batch_size']} x accum_steps {cfg['accum_steps']} x "
                f"{self.dist.world_size} processes; lower --batch-size"
            )
        median_weights = None  # median-frequency weights, computed once if anything needs them
        weighted = cfg["class_weights"] in ("median", "median_sqrt")
        if weighted:
            from fcnseg.data.stats import median_frequency_weights

            median_weights = median_frequency_weights(self.train_ds)
        self.paste_classes: list[int] = []
        if cfg["copy_paste"]:
            self.paste_classes = self._resolve_paste_classes(median_weights)
            log.info("copy-paste (p=%g) of %s", cfg["copy_paste"], ", ".join(self.classes[c] for c in self.paste_classes))
        self.class_weight = None
        if weighted:
            w, masks = median_weights, ""
            if cfg["copy_paste"] and cfg["paste_weights"]:
                from fcnseg.data.stats import pasted_median_frequency_weights

                w = pasted_median_frequency_weights(self.train_ds, self.paste_classes, cfg["copy_paste"], seed=cfg["seed"])
                masks = " for the pasted masks"
            if cfg["class_weights"] == "median_sqrt":
                w = [math.sqrt(v) for v in w]
            self.class_weight = torch.tensor(w, dtype=torch.float32, device=self.device)
            what = "median-frequency" if cfg["class_weights"] == "median" else "square-root median-frequency"
            log.info("%s class weights%s: %s", what, masks, ", ".join(f"{c}={v:.2f}" for c, v in zip(self.classes, w, strict=True)))

    def _resolve_paste_classes(self, median_weights: list[float] | None) -> list[int]:
        """`paste_classes` as class indices: names or indices from the config, else the classes
        rarer than the median one (median-frequency weight above 1)."""
        names = self.cfg["paste_classes"]
        if names is None:
            if median_weights is None:
                from fcnseg.data.stats import median_frequency_weights

                median_weights = median_frequency_weights(self.train_ds)
            return [c for c, w in enumerate(median_weights) if w > 1.0]
        out = []
        for name in names:
            if isinstance(name, int) or str(name).isdigit():
                c = int(name)
                if not 0 <= c < len(self.classes):
                    raise ConfigError(f"paste_classes: class index {c} is outside 0..{len(self.classes) - 1} of {self.cfg['data']}; classes: {', '.join(self.classes)}")
            elif name in self.classes:
                c = self.classes.index(name)
            else:
                raise ConfigError(f"paste_classes: {self.cfg['data']} has no class {name!r}; its classes are {', '.join(self.classes)} (names or indices)")
            out.append(c)
        return sorted(set(out))

    def _stage_transforms(self, stage: dict):
        from fcnseg.data.transforms import train_transforms

        cfg = self.cfg
        return train_transforms(stage["crop"], mean=self.mean, std=self.std, scale=tuple(stage["scale"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], balanced_crops=cfg["balanced_crops"], area_for_downscale=cfg["area_for_downscale"])

    def _build_loader(self) -> None:
        """The training loader of the current stage (its transforms); built again when a
        progressive stage ends (the persistent workers hold a copy of the dataset)."""
        cfg = self.cfg
        self.train_ds.transforms = self._stage_transforms(self.stages[self.stage])
        self.loader = DataLoader(
            SeededDataset(self.train_ds, cfg["seed"]),
            batch_size=cfg["batch_size"],
            sampler=self.sampler,
            num_workers=cfg["workers"],
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg["workers"] > 0,  # no re-fork and refill at each epoch
            # the loader's own base seed comes from this generator, not the global RNG
            generator=torch.Generator().manual_seed(cfg["seed"] + 1000 * self.stage),
        )

    def _done(self) -> float:
        """How far the run is, the clock of progressive stages and freeze_schedule: the
        fraction of max_minutes spent, else of the planned steps done."""
        return self._elapsed() / self.budget if self.budget is not None else self.step / max(1, self.planned_steps)

    def _stage_at(self) -> int:
        """The stage the run is in now (by `_done`)."""
        done = self._done()
        return next(i for i, stage in enumerate(self.stages) if done < stage["until"] or i == len(self.stages) - 1)

    def _freeze_due(self) -> None:
        """Freezes the modules of every freeze_schedule entry whose time has come (at the
        start of a run too, so a resumed run is frozen as it was): their parameters stop
        getting gradients (the optimizer skips them; their BatchNorm statistics still follow
        the batches), and backward stops at the lowest layer that still trains."""
        sched, names = self.cfg["freeze_schedule"], []
        while self.n_frozen < len(sched):
            due = sched[self.n_frozen]["at"] <= self._done()
            if self.dist.enabled:  # every rank freezes at the same step
                flag = torch.tensor([int(due)], device=self.device if self.device.type == "cuda" else "cpu")
                due = bool(ddp.all_reduce_sum(flag).item())
            if not due:
                break
            names += sched[self.n_frozen]["modules"]
            self.n_frozen += 1
        if not names:
            return
        n = 0
        for name in names:
            for p in self.model.get_submodule(name).parameters():
                n += p.numel() * p.requires_grad
                p.requires_grad_(False)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("step %d: froze %s (%.2fM parameters; %.2fM still train)", self.step, ", ".join(names), n / 1e6, trainable / 1e6)
        self._record({"event": "freeze", "epoch": self.step / self.steps_per_epoch, "step": self.step, "modules": names, "time_s": self._elapsed()})
        self._wrap()

    def _stage_ended(self) -> bool:
        if self.stage == len(self.stages) - 1:
            return False
        ended = self._stage_at() != self.stage
        if self.dist.enabled:  # every rank changes crops at the same step
            flag = torch.tensor([int(ended)], device=self.device if self.device.type == "cuda" else "cpu")
            ended = bool(ddp.all_reduce_sum(flag).item())
        return ended

    def _next_stage(self) -> None:
        self.stage = max(self.stage + 1, self._stage_at())
        stage = self.stages[self.stage]
        self.loader = None  # shuts the old workers down
        self._build_loader()
        self.stage_timing = {"steps": 0, "step_s": 0.0}  # measured again on the new crops
        log.info("step %d: stage %d of %d, crops %dx%d of frames scaled %.3g-%.3g", self.step, self.stage + 1, len(self.stages), *stage["crop"], *stage["scale"])
        self._record({"event": "stage", "epoch": self.step / self.steps_per_epoch, "step": self.step, "stage": self.stage, "time_s": self._elapsed()})

    def _val_source(self) -> dict:
        """build_dataset keywords of the validation data (the training dataset by default)."""
        cfg = self.cfg
        if cfg["val_data"] and cfg["val_data"] != cfg["data"]:
            return {"name": cfg["val_data"], "root": cfg["val_data_root"], **cfg["val_data_options"]}
        return {"name": cfg["data"], "root": cfg["val_data_root"] or cfg["data_root"], **cfg["data_options"], **cfg["val_data_options"]}

    def _check_data(self) -> None:
        """Runs the data checker on the splits used: bad files stop the run with the report,
        or with --skip-check are left out (and listed)."""
        from fcnseg.data.check import bad_paths, check_dataset, format_report

        cfg = self.cfg
        problems = []
        if self.main:
            val = self._val_source()
            sources = [(cfg["data"], cfg["data_root"], cfg["train_split"], cfg["data_options"])]
            sources.append((val.pop("name"), val.pop("root"), cfg["val_split"], val))
            for name, root, split, opts in sources:
                found = check_dataset(name, root, splits=[split], **opts)
                problems += [p for p in found if p not in problems]
        problems = ddp.broadcast_object(problems)
        if not problems:
            return
        report = format_report(problems)
        fatal = [p for p in problems if getattr(p, "fatal", False)]
        if fatal or not cfg["skip_check"]:
            log.error("%s", report)
            how = "fix them" if fatal else "fix them, or pass --skip-check to leave those files out"
            raise DataError(f"{cfg['data']}: {len(problems)} problem(s) in the data, the first: {problems[0].message} (report above; `fcnseg data check` lists them); {how}")
        paths = bad_paths(problems)
        dropped = self.train_ds.exclude(paths) + self.val_ds.exclude(paths)
        log.warning("%s\n--skip-check: left out %d image/mask pair(s), listed above", report, dropped)
        if len(self.train_ds) == 0 or len(self.val_ds) == 0:
            raise DataError(f"{cfg['data']}: no usable pairs left after --skip-check")

    def _zero_init_residual(self) -> None:
        from fcnseg.models.backbones.resnet import ResNet, zero_init_residual

        cfg = self.cfg
        backbone = getattr(self.model, "backbone", None)
        if not isinstance(backbone, ResNet):
            raise ConfigError(f"zero_init_residual needs a ResNet backbone, not {cfg['backbone']!r} (set zero_init_residual: false)")
        log.info("zero_init_residual: %d residual branches start at zero", zero_init_residual(backbone))

    def _build_model(self) -> None:
        from fcnseg.models import build_model

        cfg = self.cfg
        weights = cfg["weights"]
        if weights and weights != "imagenet" and Path(weights).is_file():
            self._check_weights_classes(Path(weights))
        self.model = build_model(
            cfg["model"], backbone=cfg["backbone"], num_classes=self.num_classes, weights=weights,
            upsample=cfg["upsample"], align=cfg["align"], output_stride=cfg["output_stride"], context=cfg["context"],
        )
        if cfg["zero_init_residual"]:
            self._zero_init_residual()
        if cfg["init_from"] and self.ckpt is None:
            src = load_checkpoint(cfg["init_from"])
            loaded, left, unused = load_matching(self.model, src["model"])
            log.info("init-from %s: loaded %d/%d tensors", cfg["init_from"], len(loaded), len(loaded) + len(left))
            if left:
                log.info("  left at their initialisation: %s", _short(left))
            if unused:
                log.info("  not used from the checkpoint: %s", _short(unused))
        if cfg["freeze_backbone"]:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.n_frozen = 0  # freeze_schedule entries applied
        for entry in cfg["freeze_schedule"]:
            for name in entry["modules"]:
                try:
                    module = self.model.get_submodule(name)
                except AttributeError:
                    top = ", ".join(n for n, _ in self.model.named_children())
                    raise ConfigError(f"freeze_schedule: {cfg['model']}/{cfg['backbone']} has no module {name!r} (dotted names from the model, e.g. backbone.layer1; its top-level modules: {top})") from None
                if not any(True for _ in module.parameters()):
                    raise ConfigError(f"freeze_schedule: module {name!r} of {cfg['model']}/{cfg['backbone']} has no parameters to freeze")
        # with ema the average is what validation, best.pt and the checkpoints' "model" hold;
        # made before _TrainNet hooks the model and DDP converts its BatchNorm layers
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        self.eval_model: nn.Module = self.model
        if cfg["ema"]:
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=ema_average(cfg["ema"]), use_buffers=True)
            self.ema.module.eval()
            self.eval_model = self.ema.module
        self.net = _TrainNet(self.model, self.num_classes, aux=cfg["aux_loss"] > 0)
        # the loss from the coarse scores, a few images at a time (upsampled_segmentation_loss);
        # the same loss, so always where the model's last upsampling allows it
        self.coarse_loss = bool(getattr(self.model, "fixed_upsampling", False)) and not cfg["lovasz"] and not cfg["compile"]
        if self.dist.enabled and self.device.type == "cuda":
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        elif self.dist.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.net.modules()):
            log.info("DDP on %s: BatchNorm statistics stay per process (torch's SyncBatchNorm needs GPUs)", self.device.type)
        self.net.to(self.device)
        if self.precision.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.ema is not None:
            self.ema.to(self.device)
            if self.precision.channels_last:
                self.ema.to(memory_format=torch.channels_last)

    def _check_weights_classes(self, path: Path) -> None:
        """A full fcnseg checkpoint given as --weights must predict the dataset's classes."""
        from fcnseg.weights import safe_torch_load

        try:
            ckpt = safe_torch_load(path, what="weights file")
        except Exception:
            return  # not a checkpoint; the weights loader reports what it is
        conf = ckpt.get("model_config") if isinstance(ckpt, dict) else None
        if conf and int(conf.get("num_classes", self.num_classes)) != self.num_classes:
            raise ConfigError(
                f"--weights {path} predicts {conf['num_classes']} classes but {self.cfg['data']} has "
                f"{self.num_classes}; use --init-from {path} to copy only the tensors that fit"
            )

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema_updates"):
                self.ema.module.load_state_dict(ckpt["model"])
                self.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
            else:  # resumed from a run without ema: the average starts here
                log.info("ema: the checkpoint has no weight average; it starts from the resumed weights")
        if self.net.aux_head is not None and ckpt.get("aux_head") is not None:
            self.net.aux_head.load_state_dict(ckpt["aux_head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.position = float(ckpt.get("schedule_position", self.step))
        # older checkpoints: the schedule's length was the step count
        self.resumed_total = ckpt.get("total_steps", ckpt["scheduler"]["total_steps"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        self.best_miou = ckpt.get("best_miou", -math.inf)
        self.best = ckpt.get("best")
        self.last_eval = ckpt.get("last_eval")
        _set_rng_state(ckpt["rng"])
        log.info("resumed at epoch %d, step %d (batch %d of the epoch)", self.epoch, self.step, self.batch_in_epoch)

    def _open_logs(self) -> None:
        self.jsonl = self.run_dir / "metrics.jsonl"
        if self.jsonl.exists():  # a resumed run: drop what came after the checkpoint
            kept = []
            for line in self.jsonl.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    e = json.loads(line)
                    if e.get("step", 0) <= self.step and not (e.get("step", 0) == self.step and e.get("event") == "end"):
                        kept.append(e)
            self.events = kept
            self.jsonl.write_text("".join(json.dumps(e) + "\n" for e in kept))
        self.tb = None
        if self.cfg["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; no event files")
            else:
                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)

    def _record(self, event: dict) -> None:
        if not self.main:
            return
        self.events.append(event)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(event) + "\n")
        if getattr(self, "callback", None) is not None:
            self.callback(event)
        if self.tb is not None:
            kind = event["event"]
            for key, value in event.items():
                if key not in ("event", "step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, event["step"])

    # ---------------------------------------------------------------- the loop
    def run(self) -> Path:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "%s/%s on %s (%d classes, %.1fM parameters) | %s %s | %d train / %d val images | "
            "batch %d x %d process(es) x %d accum | %d steps/epoch | %s",
            cfg["model"], cfg["backbone"], cfg["data"], self.num_classes, n_params / 1e6, self.device,
            self.precision.name, len(self.train_ds), len(self.val_ds), cfg["batch_size"], self.dist.world_size,
            cfg["accum_steps"], self.steps_per_epoch, self.run_dir,
        )
        self.budget = cfg["max_minutes"] * 60.0 if cfg["max_minutes"] else None
        self.timing = {"steps": 0, "step_s": 0.0, "epoch_end_s": [], "eval_s": None, "save_s": 0.0, "draw_s": 0.0}
        if self.budget is not None and cfg["eval_every"]:
            self.timing["eval_s"] = self._probe_eval_time()
        self.stage = self._stage_at()
        self._freeze_due()
        self.stage_timing = {"steps": 0, "step_s": 0.0}
        self.px_step_s: float | None = None  # seconds per step per crop pixel, as last measured
        self._build_loader()
        self.stop: str | None = None
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.main, unit="step", dynamic_ncols=True,
            file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            while self.epoch < cfg["epochs"] and self.stop is None:
                if self._train_epoch():
                    self._end_of_epoch()
            self.bar.close()
            self._finish(self.stop or "epochs")
        return self.run_dir

    def _train_epoch(self) -> bool:
        """Runs the rest of the current epoch; True when it was completed. Under a time
        budget it may stop early (``self.stop`` set)."""
        from fcnseg.data.transforms import copy_paste

        cfg = self.cfg
        accum = cfg["accum_steps"]
        used = self.steps_per_epoch * accum
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * cfg["batch_size"])
        self.net.train()
        if cfg["freeze_backbone"]:
            self.model.backbone.eval()  # frozen BN statistics stay as loaded
        self.bar.set_description(f"epoch {self.epoch + 1}/{cfg['epochs']}")
        loss_sum = torch.zeros((), device=self.device)
        self.schedule.apply(self.position)
        it = iter(self.loader)
        window_steps, window_t0 = 0, time.monotonic()  # after the (re)started workers fork
        for b in range(self.batch_in_epoch, used):
            images, masks = next(it)
            images = images.to(self.device, non_blocking=True)
            masks = masks.to(self.device, non_blocking=True)
            if self.paste_classes:
                images, masks = copy_paste(images, masks, self.paste_classes, cfg["copy_paste"])
            if self.precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last_micro = (b + 1) % accum == 0
            sync = contextlib.nullcontext() if (last_micro or not self.dist.enabled) else self.train_net.no_sync()
            with sync:
                with self.precision.autocast(self.device):
                    loss = self._loss(images, masks)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach() / accum
            if not last_micro:
                continue
            if cfg["clip_grad"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg["clip_grad"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self.position += self._unit(self.stage)
            self.batch_in_epoch = b + 1
            window_steps += 1
            self.bar.update(1)
            step_lr = self.schedule.last_lr  # the rate this step ran at
            if self.step % cfg["log_every"] == 0 or self.batch_in_epoch == used:
                self._log_window(window_steps, time.monotonic() - window_t0, loss_sum, accum, step_lr)
                loss_sum.zero_()
                window_steps, window_t0 = 0, time.monotonic()
                self._revise_total_steps()
            self.schedule.apply(self.position)
            self._freeze_due()
            if cfg["ckpt_every_steps"] and self.step % cfg["ckpt_every_steps"] == 0 and self.batch_in_epoch < used:
                self._save("last.pt")
            if self.budget is not None and (self.step >= self.total_steps or self._out_of_time()):
                self.stop = "max_minutes"
            elif not self._stage_ended():
                continue
            if window_steps:  # the steps since the last log line, on this stage's crops
                self._log_window(window_steps, time.monotonic() - window_t0, loss_sum, accum, step_lr)
            if not self.stop:
                self._next_stage()  # the rest of the epoch runs on the new loader
            return self.batch_in_epoch == used
        return True

    def _log_window(self, steps: int, dt: float, loss_sum: torch.Tensor, accum: int, lr: float) -> None:
        """Log the mean loss and images/s of the last ``steps`` steps (``dt`` seconds; ``lr``:
        the rate of the last one) and add them to the step timing (whole run and current
        stage) the time budget is planned on."""
        cfg = self.cfg
        self.timing["steps"] += steps
        self.timing["step_s"] += dt
        self.stage_timing["steps"] += steps
        self.stage_timing["step_s"] += dt
        h, w = self.stages[self.stage]["crop"]
        self.px_step_s = self.stage_timing["step_s"] / self.stage_timing["steps"] / (h * w)
        loss_value = float(ddp.all_reduce_sum(loss_sum.clone()).item()) / (steps * self.dist.world_size)
        ips = steps * cfg["batch_size"] * accum * self.dist.world_size / max(dt, 1e-9)
        self._record({"event": "train", "epoch": self.step / self.steps_per_epoch, "step": self.step, "loss": loss_value, "lr": lr, "images_per_s": ips, "time_s": self._elapsed()})
        self.bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{ips:.1f}", lr=f"{lr:.2e}")

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The step's loss (under the caller's autocast): from the model's coarse scores
        (``upsampled_segmentation_loss``) where ``coarse_loss``, else from its full-resolution
        logits; plus the Lovász and auxiliary terms when asked for."""
        cfg = self.cfg
        if self.coarse_loss:
            scores, aux = self.train_net(images, coarse=True)
            tail = functools.partial(self.model.upsample_scores, size=tuple(images.shape[-2:]))
            loss = upsampled_segmentation_loss(scores, masks, tail, self.class_weight, cfg["hard_pixels"])
        else:
            logits, aux = self.train_net(images)
            loss = segmentation_loss(logits, masks, self.class_weight, cfg["hard_pixels"])
            if cfg["lovasz"]:
                loss = loss + cfg["lovasz"] * lovasz_softmax_loss(logits, masks)
        if aux is not None:
            loss = loss + cfg["aux_loss"] * segmentation_loss(aux, masks, self.class_weight, cfg["hard_pixels"])
        return loss

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.epoch += 1
        self.batch_in_epoch = 0
        if cfg["eval_every"] and (self.epoch % cfg["eval_every"] == 0 or self.epoch == cfg["epochs"]):
            self._validate()
        self._save("last.pt")
        self.timing["epoch_end_s"].append(time.monotonic() - t0)
        self._revise_total_steps()

    def _evaluate(self, max_images: int | None = None) -> dict:
        from fcnseg.engine.evaluate import evaluate

        return evaluate(
            self.eval_model, self.val_ds, device=self.device, precision=self.precision,
            batch_size=self.cfg["eval_batch_size"], num_workers=self.cfg["workers"],
            distributed=self.dist.enabled, mean=self.mean, std=self.std, max_images=max_images,
            tta=self.cfg["eval_tta"], crf=self.cfg["eval_crf"],  # best.pt is chosen as `fcnseg eval` will score it
        )

    def _validate(self) -> dict:
        t0 = time.monotonic()
        metrics = self._evaluate()
        eval_s = time.monotonic() - t0
        self.timing["eval_s"] = eval_s
        summary = {k: metrics[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}
        event = {"event": "eval", "epoch": self.step / self.steps_per_epoch, "step": self.step, **summary, "iou": metrics["iou"], "eval_s": eval_s, "time_s": self._elapsed()}
        self.last_eval = event
        self._record(event)
        miou = metrics["mean_iou"]
        log.info(
            "epoch %d step %d: val mean IU %.4f | pixel acc %.4f | mean acc %.4f | fw IU %.4f (%.1fs)",
            self.epoch, self.step, miou, summary["pixel_acc"], summary["mean_acc"], summary["fw_iou"], eval_s,
        )
        if not math.isnan(miou) and miou > self.best_miou:
            self.best_miou = miou
            self.best = {**summary, "per_class": metrics["per_class"], "epoch": self.epoch, "step": self.step}
            self._save("best.pt")
        if self.main:
            t0 = time.monotonic()
            self._draw(f"epoch_{self.epoch}")
            self.timing["draw_s"] = time.monotonic() - t0
        return metrics

    def _finish(self, stopped: str) -> None:
        validated = bool(self.cfg["eval_every"])
        if not validated:  # nothing to choose by: best.pt is the final model, for `fcnseg eval` to score
            self._save("last.pt")
            self._save("best.pt")
        elif self.last_eval is None or self.last_eval["step"] != self.step:
            self._validate()
            self._save("last.pt")
        elapsed = self._elapsed()
        if not self.main:
            return
        steps_s = self.timing["step_s"]
        ips = self.timing["steps"] * self.cfg["batch_size"] * self.cfg["accum_steps"] * self.dist.world_size / steps_s if steps_s else None
        final = {k: self.last_eval[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")} if validated else {}
        result = {
            "final": {**final, "epoch": self.step / self.steps_per_epoch, "step": self.step},
            "validated": validated,
            "best": self.best,
            "stopped": stopped,
            "epochs": self.epoch,
            "steps": self.step,
            "time_s": elapsed,
            "train_images_per_s": ips,
            "device": str(self.device),
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "run_dir": str(self.run_dir),
            "val_images_in_train": self.val_in_train,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        self._record({"event": "end", "epoch": self.step / self.steps_per_epoch, "step": self.step, "stopped": stopped, "time_s": elapsed})
        from fcnseg.engine.visualize import plot_curves

        plot_curves(self.events, self.run_dir / "curves.png")
        if self.tb is not None:
            self.tb.close()
        if validated:
            log.info(
                "done (%s) in %.0fs: final val mean IU %.4f, best %.4f at epoch %s | %s",
                stopped, elapsed, final["mean_iou"], self.best_miou, (self.best or {}).get("epoch"), self.run_dir,
            )
        else:
            cfg = self.cfg
            root = cfg["val_data_root"] or (None if cfg["val_data"] else cfg["data_root"])
            command = f"fcnseg eval --checkpoint {self.run_dir / 'best.pt'} --data {cfg['val_data'] or cfg['data']}"
            command += (f" --data-root {root}" if root else "") + f" --split {cfg['val_split']}"
            log.info("done (%s) in %.0fs, not validated (eval_every 0): best.pt is the final model; score it with `%s`", stopped, elapsed, command)

    # ---------------------------------------------------------------- time budget
    def _elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def _reserve_s(self) -> float:
        """Time kept for the final evaluation, checkpoint and pictures (without validation: the
        two checkpoints, last.pt and best.pt)."""
        t = self.timing
        saves = 1 if self.cfg["eval_every"] else 2
        return 1.1 * (t["eval_s"] or 0.0) + saves * t["save_s"] + t["draw_s"] + 1.0

    def _out_of_time(self) -> bool:
        if self.budget is None:
            return False
        late = self._elapsed() + self._reserve_s() + self._step_s(self.stage) >= self.budget
        if self.dist.enabled:  # every rank must stop at the same step
            flag = torch.tensor([int(late)], device=self.device if self.device.type == "cuda" else "cpu")
            late = bool(ddp.all_reduce_sum(flag).item())
        return late

    def _unit(self, stage: int) -> float:
        """How far one step of ``stage`` moves the lr schedule: 1, or under
        ``schedule_unit: pixels`` its crop's pixels over the main crop's."""
        if self.cfg["schedule_unit"] == "step":
            return 1.0
        (h, w), (mh, mw) = self.stages[stage]["crop"], self.stages[-1]["crop"]
        return h * w / (mh * mw)

    def _planned_units(self) -> float:
        """The schedule's length for ``epochs`` (no time budget): the planned steps, each stage's
        share (by ``until``) weighted by ``_unit``."""
        n, done, units = self.planned_steps, 0, 0.0
        if self.cfg["schedule_unit"] == "step":
            return n
        for j, stage in enumerate(self.stages):
            end = n if j == len(self.stages) - 1 else math.ceil(stage["until"] * n)
            units += max(0, end - done) * self._unit(j)
            done = max(done, end)
        return units

    def _step_s(self, stage: int) -> float:
        """Seconds per step on the crops of ``stage``: measured on the current stage's crops,
        scaled by crop area for the others (throughput goes with pixels); 0 before any."""
        h, w = self.stages[stage]["crop"]
        return self.px_step_s * h * w if self.px_step_s else 0.0

    def _revise_total_steps(self) -> None:
        """Under ``max_minutes``: the steps that fit in the time left, from the measured step
        time (per stage, under ``progressive``) and end-of-epoch overhead, so the lr schedule
        ends when the budget does."""
        if self.budget is None or self.timing["steps"] < 3:
            return
        ends = self.timing["epoch_end_s"]
        per_epoch = (sum(ends) / len(ends)) if ends else (self.timing["eval_s"] or 0.0) / max(1, self.cfg["eval_every"])
        now, end = self._elapsed(), self.budget - self._reserve_s()
        left, units = 0.0, 0.0  # steps that fit in what is left of this stage and the later ones
        for j in range(self.stage, len(self.stages)):
            stage_end = end if j == len(self.stages) - 1 else min(end, self.stages[j]["until"] * self.budget)
            steps = max(0.0, stage_end - now) / (self._step_s(j) + per_epoch / self.steps_per_epoch)
            left, units = left + steps, units + steps * self._unit(j)
            now = max(now, stage_end)
        estimate = self.step + max(0, int(left))
        total = int(ddp.broadcast_object(min(self.planned_steps, max(estimate, self.step + 1))))
        if total != self.total_steps:
            self.total_steps = total
            self.bar.total = total
            self.bar.refresh()
        if self.cfg["schedule_unit"] == "step":
            self.schedule.total_steps = total
        else:
            self.schedule.total_steps = float(ddp.broadcast_object(self.position + units))

    @torch.no_grad()
    def _probe_eval_time(self) -> float:
        """Seconds a full validation should take, timed on a few val images through the same
        evaluate() call (first-call overheads included, so it errs on the long side)."""
        n = len(self.val_ds)
        k = min(n, 4 * self.dist.world_size)
        with torch.random.fork_rng(devices=[]):  # the probe must not shift the run's RNG
            t0 = time.monotonic()
            self._evaluate(max_images=k)
            dt = time.monotonic() - t0
        estimate = dt * n / k + 1.0
        log.info("time budget %.1f min: validation takes ~%.0fs (timed on %d images)", self.cfg["max_minutes"], estimate, k)
        return estimate

    # ---------------------------------------------------------------- files
    def _save(self, name: str) -> None:
        if not self.main:
            return
        state = {
            "model": self.eval_model.state_dict(),  # what validation scored: the average under ema
            "train_model": self.model.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "model_config": dict(self.model.config),
            "aux_head": self.net.aux_head.state_dict() if self.net.aux_head is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "schedule_position": self.position,
            "total_steps": self.total_steps,
            "best_miou": self.best_miou,
            "best": self.best,
            "last_eval": self.last_eval,
            "config": dict(self.cfg),
            "classes": list(self.classes),
            "palette": self.palette.tolist(),
            "mean": self.mean,
            "std": self.std,
            "rng": _rng_state(),
            "train_time_s": self._elapsed(),
        }
        t0 = time.monotonic()
        save_checkpoint(state, self.run_dir / name)
        if hasattr(self, "timing"):
            self.timing["save_s"] = max(self.timing["save_s"], time.monotonic() - t0)

    @torch.no_grad()
    def _draw(self, tag: str) -> None:
        """samples/<tag>.png (image | truth | prediction) and curves.png."""
        from fcnseg.engine.inference import segment
        from fcnseg.engine.visualize import plot_curves, save_sample_grid

        n = min(self.cfg["num_samples"], len(self.val_ds))
        if n:
            mean = torch.tensor(self.mean).view(3, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1)
            images, targets, preds = [], [], []
            self.eval_model.eval()
            try:
                for i in range(n):
                    image, mask = self.val_ds.load(i)
                    x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std
                    score = segment(self.eval_model, [x], out_sizes=[np.shape(mask)], device=self.device, precision=self.precision)[0]
                    images.append(image)
                    targets.append(np.asarray(mask))
                    preds.append(score.argmax(0).cpu().numpy())
            finally:
                if self.eval_model is self.model:
                    self.model.train()
            save_sample_grid(images, targets, preds, self.palette, self.run_dir / "samples" / f"{tag}.png", title=f"{tag} (step {self.step})")
        plot_curves(self.events, self.run_dir / "curves.png")


def train(cfg: dict | TrainConfig | None = None, *, config_file: str | os.PathLike | None = None, callback=None) -> Path:
    """Trains a model and returns its run directory.

    ``cfg``: TrainConfig fields to set (a dict of the options given, or a whole
    TrainConfig); ``config_file``: a YAML file of the same keys, applied before ``cfg``.
    With ``resume`` set the run continues from that checkpoint (``"auto"``: OUT/last.pt),
    under the checkpoint's config with ``config_file``/``cfg`` applied on top.

    The run directory gets config.yaml, last.pt, best.pt, metrics.jsonl, metrics.json,
    curves.png, samples/epoch_N.png and TensorBoard event files (rank 0 only).
    """
    given = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg or {})
    resolved = resolve_config(given, config_file=config_file)
    ckpt = None
    if resolved["resume"]:
        path = _find_resume(resolved)
        ckpt = load_checkpoint(path)
        explicit = {k: v for k, v in given.items() if k != "config"}
        resolved = resolve_config(explicit, config_file=config_file, base=ckpt["config"])
        resolved["resume"] = str(path)
        if "out" not in given:
            resolved["out"] = str(path.parent)
    trainer = _Trainer(resolved, ckpt)
    trainer.callback = callback
    try:
        trainer.setup()
        return trainer.run()
    finally:
        ddp.cleanup_distributed()
