"""One training step, shared by the trainer, ``fcnseg bench`` and the experiment scripts.

``TrainStep`` takes the micro-batches of one optimizer step as the data loader gives them and
does: device transfer, class copy-paste, forward and loss under autocast (the loss from the
coarse scores where the model's last upsampling is fixed, else from the full-resolution
logits; plus the Lovász and auxiliary terms when asked for), the (scaled) backward with
gradient accumulation (DDP gradient sync on the last micro-batch only), clipping, the
optimizer and scaler steps and the weight average. ``build_train_step`` builds it, with the
optimizer, from a training config.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.config import TrainConfig
from fcnseg.errors import ConfigError
from fcnseg.precision import Precision
from fcnseg.training.losses import (
    lovasz_softmax_loss,
    segmentation_loss,
    upsampled_segmentation_loss,
)


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


class TrainNet(nn.Module):
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


class TrainStep:
    """``step(micro_batches) -> loss``: one optimizer step over ``accum_steps`` micro-batches
    ``(images (N, 3, H, W) float, masks (N, H, W) int64)`` (CPU or device tensors); returns
    the step's loss (the mean over its micro-batches, a 0-d tensor: no host sync).

    ``net``: a ``TrainNet`` (a plain model is wrapped in one, without aux head); ``runner``:
    the module the forward runs through (``net`` compiled and/or DDP-wrapped; default
    ``net``); ``ema``: an ``AveragedModel`` of ``net.model`` updated after each step."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        precision: Precision,
        device: torch.device,
        runner: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        class_weight: torch.Tensor | None = None,
        hard_pixels: float = 1.0,
        lovasz: float = 0.0,
        aux_loss: float = 0.0,
        accum_steps: int = 1,
        clip_grad: float | None = None,
        copy_paste: float = 0.0,
        paste_classes: Iterable[int] = (),
        ema: torch.optim.swa_utils.AveragedModel | None = None,
        coarse_loss: bool | None = None,
    ) -> None:
        self.net = net if isinstance(net, TrainNet) else TrainNet(net, 0, aux=False)
        self.model = self.net.model
        self.runner = runner if runner is not None else self.net
        self.optimizer, self.precision, self.device = optimizer, precision, torch.device(device)
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(self.device.type, enabled=precision.use_scaler)
        self.class_weight, self.hard_pixels, self.lovasz, self.aux_loss = class_weight, hard_pixels, lovasz, aux_loss
        self.accum_steps, self.clip_grad, self.ema = accum_steps, clip_grad, ema
        self.copy_paste, self.paste_classes = copy_paste, list(paste_classes)
        # the loss from the coarse scores, a few images at a time (upsampled_segmentation_loss):
        # the same loss, so always where the model's last upsampling allows it (not under
        # torch.compile, which cannot trace the custom autograd Function's Python callback)
        if coarse_loss is None:
            coarse_loss = bool(getattr(self.model, "fixed_upsampling", False)) and not lovasz and not hasattr(self.runner, "_orig_mod")
        self.coarse_loss = coarse_loss

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch (under the caller's autocast)."""
        if self.coarse_loss:
            scores, aux = self.runner(images, coarse=True)
            tail = functools.partial(self.model.upsample_scores, size=tuple(images.shape[-2:]))
            loss = upsampled_segmentation_loss(scores, masks, tail, self.class_weight, self.hard_pixels)
        else:
            logits, aux = self.runner(images)
            loss = segmentation_loss(logits, masks, self.class_weight, self.hard_pixels)
            if self.lovasz:
                loss = loss + self.lovasz * lovasz_softmax_loss(logits, masks)
        if aux is not None:
            loss = loss + self.aux_loss * segmentation_loss(aux, masks, self.class_weight, self.hard_pixels)
        return loss

    def __call__(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        from fcnseg.data.transforms import copy_paste

        accum = self.accum_steps
        total = torch.zeros((), device=self.device)
        for k, (images, masks) in enumerate(micro_batches):
            images = images.to(self.device, non_blocking=True)
            masks = masks.to(self.device, non_blocking=True)
            if self.paste_classes:
                images, masks = copy_paste(images, masks, self.paste_classes, self.copy_paste)
            if self.precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last = k == accum - 1
            no_sync = getattr(self.runner, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with self.precision.autocast(self.device):
                    loss = self.loss(images, masks)
                self.scaler.scale(loss / accum).backward()
            total += loss.detach() / accum
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return total


def build_train_step(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    device: torch.device,
    precision: Precision,
    num_classes: int,
    class_weight: torch.Tensor | None = None,
    paste_classes: Iterable[int] = (),
    distributed: bool = False,
) -> TrainStep:
    """The training step of config ``cfg`` (TrainConfig keys: ``optimizer``, ``lr``,
    ``momentum``, ``weight_decay``, ``aux_loss``, ``hard_pixels``, ``lovasz``, ``ema``,
    ``accum_steps``, ``clip_grad``, ``copy_paste``, ``compile``) for ``model``: the weight
    average (``ema``), the auxiliary head, the move to ``device`` (channels_last where the
    precision asks for it), the optimizer (two parameter groups, no weight decay on biases
    and norms), the grad scaler, and ``torch.compile`` / DDP wrapping."""
    ema = None
    if cfg.ema:  # made before TrainNet hooks the model and DDP converts its BatchNorm layers
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_average(cfg.ema), use_buffers=True)
        ema.module.eval()
    net = TrainNet(model, num_classes, aux=cfg.aux_loss > 0)
    if distributed and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    if precision.channels_last:
        net.to(memory_format=torch.channels_last)
    if ema is not None:
        ema.to(device)
        if precision.channels_last:
            ema.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(param_groups(net, cfg.weight_decay), name=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, device=device)
    runner: nn.Module = net
    if cfg.compile:
        runner = torch.compile(runner)
    if distributed:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
    return TrainStep(
        net, optimizer, precision=precision, device=device, runner=runner,
        class_weight=class_weight, hard_pixels=cfg.hard_pixels, lovasz=cfg.lovasz, aux_loss=cfg.aux_loss,
        accum_steps=cfg.accum_steps, clip_grad=cfg.clip_grad, copy_paste=cfg.copy_paste,
        paste_classes=paste_classes if cfg.copy_paste else (), ema=ema,
        coarse_loss=bool(getattr(model, "fixed_upsampling", False)) and not cfg.lovasz and not cfg.compile,
    )


def build_model_for_training(cfg: TrainConfig, num_classes: int, *, init_from: bool = True) -> nn.Module:
    """The model of ``cfg`` as training starts it: ``build_model`` (with ``weights``), then
    ``zero_init_residual``, the tensors of ``init_from`` whose name and shape match (when
    ``init_from``; a resumed run loads its checkpoint instead) and ``freeze_backbone``."""
    import logging
    from pathlib import Path

    from fcnseg.models import build_model
    from fcnseg.weights import load_matching

    log = logging.getLogger("fcnseg.train")
    weights = cfg.weights
    if weights and weights != "imagenet" and Path(weights).is_file():
        _check_weights_classes(Path(weights), num_classes, cfg.data)
    model = build_model(
        cfg.model, backbone=cfg.backbone, num_classes=num_classes, weights=weights,
        upsample=cfg.upsample, align=cfg.align, output_stride=cfg.output_stride,
    )
    if cfg.zero_init_residual:
        from fcnseg.models.backbones.resnet import ResNet, zero_init_residual

        if not isinstance(getattr(model, "backbone", None), ResNet):
            raise ConfigError(f"zero_init_residual needs a ResNet backbone, not {cfg.backbone!r} (set zero_init_residual: false)")
        log.info("zero_init_residual: %d residual branches start at zero", zero_init_residual(model.backbone))
    if cfg.init_from and init_from:
        from fcnseg.checkpoint import load_checkpoint

        loaded, left, unused = load_matching(model, load_checkpoint(cfg.init_from)["model"])
        log.info("init-from %s: loaded %d/%d tensors", cfg.init_from, len(loaded), len(loaded) + len(left))
        short = lambda names: ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")  # noqa: E731
        if left:
            log.info("  left at their initialisation: %s", short(left))
        if unused:
            log.info("  not used from the checkpoint: %s", short(unused))
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model


def _check_weights_classes(path, num_classes: int, data: str) -> None:
    """A full fcnseg checkpoint given as --weights must predict the dataset's classes."""
    from fcnseg.weights import safe_torch_load

    try:
        ckpt = safe_torch_load(path, what="weights file")
    except Exception:
        return  # not a checkpoint; the weights loader reports what it is
    conf = ckpt.get("model_config") if isinstance(ckpt, dict) else None
    if conf and int(conf.get("num_classes", num_classes)) != num_classes:
        raise ConfigError(
            f"--weights {path} predicts {conf['num_classes']} classes but {data} has "
            f"{num_classes}; use --init-from {path} to copy only the tensors that fit"
        )
