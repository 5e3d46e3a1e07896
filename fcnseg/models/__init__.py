"""Models built by name: a plain dict registry filled by ``@register_model``.

``build_model("fcn8s", backbone="vgg16", num_classes=21)`` and ``list_models()``; the
architectures live in ``fcn.py`` (fcn32s/16s/8s/4s) and ``seed.py`` (the tutorial's net), the
backbones in ``backbones/`` (one contract: a dict of named feature maps), the upsamplers
(deconv / bilinear / unpool, and the pixel geometry that aligns them) in ``upsample.py``,
pretrained weights in ``fcnseg/weights.py``.

Note: in train mode a ResNet's BatchNorm needs more than one value per channel, so a
single 32x32 image (a 1x1 stride-32 map) cannot be trained on; 33 px and up, or a batch
of two, work.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike

from torch import nn

from fcnseg.errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}

ALIGNS = ("same", "paper")
# models and backbones that were removed (measured no gain) -> what to use instead
REMOVED_MODELS = {"fcn2s": "use fcn4s", "fpn": "use fcn4s", "resnet10": "use resnet18"}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(MODELS)


def build_model(
    name: str,
    *,
    backbone: str = "vgg16",
    num_classes: int,
    weights: str | PathLike | None = None,
    in_channels: int = 3,
    upsample: str = "deconv",
    align: str = "same",
    output_stride: int = 32,
    progress: bool = True,
    context: str | None = None,
) -> nn.Module:
    """Build model ``name`` (see ``list_models()``); ``forward(x: (N, in_channels, H, W))``
    returns logits ``(N, num_classes, H, W)`` for any ``H, W >= 32``.

    ``weights``: ``None`` (random), ``"imagenet"`` (the backbone's torchvision checkpoint,
    downloaded and hash-checked), or a path to a torchvision-format backbone state dict
    or an fcnseg checkpoint. ``upsample``: ``"deconv"``, ``"bilinear"`` or ``"unpool"``.
    ``align``: ``"same"`` or ``"paper"`` (Caffe FCN geometry, VGG FCNs only).
    ``output_stride``: 32, or 16/8 for ResNets (dilated). Conflicts raise ``ConfigError``.
    (``context`` is accepted only as None: the pyramid pooling module was removed, and the
    config of a checkpoint that used it names it in the error.)
    The model's ``.config`` holds these arguments minus ``weights``/``progress``.
    """
    from fcnseg.models.backbones import BACKBONES
    from fcnseg.models.upsample import UPSAMPLE_MODES

    if name in REMOVED_MODELS or backbone in REMOVED_MODELS or context is not None:
        what = f"context={context!r}" if context is not None else repr(name if name in REMOVED_MODELS else backbone)
        raise ConfigError(f"{what} was removed from fcnseg (an ablation measured no gain; docs/experiments has the figures); {REMOVED_MODELS.get(name) or REMOVED_MODELS.get(backbone) or 'drop it'}")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, not {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, not {in_channels!r}")
    if upsample not in UPSAMPLE_MODES:
        raise ConfigError(
            f"unknown upsample {upsample!r}; choose one of {', '.join(UPSAMPLE_MODES)}"
        )
    if align not in ALIGNS:
        raise ConfigError(f"unknown align {align!r}; choose one of {', '.join(ALIGNS)}")
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, not {output_stride!r}")
    config = dict(
        name=name,
        backbone=backbone,
        num_classes=num_classes,
        in_channels=in_channels,
        upsample=upsample,
        align=align,
        output_stride=output_stride,
    )
    model = MODELS[name](**{k: v for k, v in config.items() if k != "name"}, config=config)
    if weights is not None:
        from fcnseg.weights import load_weights

        load_weights(model, weights, progress=progress)
    return model


# the builders register themselves on import
from fcnseg.models import fcn as _fcn  # noqa: E402,F401
from fcnseg.models import seed as _seed  # noqa: E402,F401

__all__ = ["MODELS", "build_model", "list_models", "register_model"]
