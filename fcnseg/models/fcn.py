"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell), one class over any backbone.

``fcn4s`` continues the paper's skip pattern one level further (``score_pool2`` on the
stride-4 map, ``upscore_pool3``, ``upscore4``); the paper stops at pool3 ("diminishing
returns" on VOC), but thin classes (poles, signs) on street scenes are 1-4 px wide, under
one stride-8 cell. It has no Caffe geometry, so only ``align="same"``.

Layer names follow the authors' Caffe nets (``score_fr``, ``score_pool4``, ``score_pool3``,
``upscore2``, ``upscore_pool4``, ``upscore8``/``upscore16``/``upscore32``) so conversions
map one to one. Score layers are zero-initialised (as the authors do); the deconvolutions
are bilinear-initialised and learnable.

Fusion: ``up`` (the upsampled coarser scores) and ``skip`` (the finer score map, read from
offset ``c``) are summed over their common extent ``up[:h, :w] + skip[c:c+h, c:c+w]``,
``h = min(up_h, skip_h - c)``. With ``align="same"`` ``c = 0`` and ``up`` is the larger
(ceil-mode pools), so this crops the upsampled map to the skip; with ``align="paper"``
and deconvolutions ``up`` is the smaller and ``c`` is the authors' offset (FCN-8s: 5 for
pool4, 9 for pool3; final crop 31), which reproduces their Caffe ``crop`` layers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.errors import ConfigError
from fcnseg.models import register_model
from fcnseg.models.backbones import build_backbone
from fcnseg.models.upsample import Bilinear, Identity, make_upsampler

# the authors' crop offsets (voc-fcn*/net.py): variant -> (pool4, pool3, final)
PAPER_CROPS = {"fcn32s": (0, 0, 19), "fcn16s": (5, 0, 27), "fcn8s": (5, 9, 31)}
# with unpooling the maps stay in the pooled frames: only fc6's valid 7x7 conv (3 px each
# side) and conv1_1's 100 px padding need undoing
PAPER_UNPOOL_PAD, PAPER_UNPOOL_CROP = 3, 100
VARIANTS = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2, "fcn4s": 3}


class FCN(nn.Module):
    """FCN head over a backbone: ``forward(x: (N, C, H, W)) -> logits (N, num_classes, H, W)``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        variant: str,
        num_classes: int,
        upsample: str,
        align: str,
        config: dict,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown FCN variant {variant!r}")
        self.backbone = backbone
        self.config = dict(config)
        self.variant, self.num_classes = variant, num_classes
        self.upsample, self.align = upsample, align
        skips = VARIANTS[variant]
        K = num_classes
        ch, st = backbone.out_channels, backbone.strides
        if align == "paper":
            if variant not in PAPER_CROPS:
                raise ConfigError(
                    f"{variant} has no Caffe geometry (the authors' nets stop at fcn8s); "
                    "use align='same'"
                )
            geometry = "caffe"
            if upsample == "unpool":
                self.pre_pad, crops = PAPER_UNPOOL_PAD, (0, 0, PAPER_UNPOOL_CROP)
            else:
                self.pre_pad, crops = 0, PAPER_CROPS[variant]
        else:
            geometry, self.pre_pad, crops = backbone.geometry, 0, (0, 0, 0)
        self.crop_pool4, self.crop_pool3, self.crop_final = crops

        def up(from_key: str, to_stride: int) -> nn.Module:
            return make_upsampler(
                upsample,
                K,
                backbone=backbone,
                from_stride=st[from_key],
                to_stride=to_stride,
                geometry=geometry,
            )

        self.score_fr = nn.Conv2d(ch["out"], K, 1)
        if skips == 0:
            self.upscore32 = up("out", 1)
        if skips >= 1:
            self.score_pool4 = nn.Conv2d(ch["pool4"], K, 1)
            self.upscore2 = up("out", st["pool4"])
        if skips == 1:
            self.upscore16 = up("pool4", 1)
        if skips >= 2:
            self.score_pool3 = nn.Conv2d(ch["pool3"], K, 1)
            self.upscore_pool4 = up("pool4", st["pool3"])
        if skips == 2:
            self.upscore8 = up("pool3", 1)
        if skips >= 3:
            self.score_pool2 = nn.Conv2d(ch["pool2"], K, 1)
            self.upscore_pool3 = up("pool3", st["pool2"])
        if skips == 3:
            self.upscore4 = up("pool2", 1)
        self._last = ("upscore32", "upscore16", "upscore8", "upscore4")[skips]  # the last upsampling
        for m in (
            self.score_fr,
            getattr(self, "score_pool4", None),
            getattr(self, "score_pool3", None),
            getattr(self, "score_pool2", None),
        ):
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def fuse(up: Tensor, skip: Tensor, c: int) -> Tensor:
        """``up[:h, :w] + skip[c:c+h, c:c+w]`` over the common extent (see module doc)."""
        h = min(up.shape[-2], skip.shape[-2] - c)
        w = min(up.shape[-1], skip.shape[-1] - c)
        return up[..., :h, :w] + skip[..., c : c + h, c : c + w]

    @property
    def fixed_upsampling(self) -> bool:
        """Whether the last upsampling is fixed (bilinear: no parameters, no features), so
        that ``upsample_scores(model(x, coarse=True), x.shape[-2:])`` is ``model(x)``."""
        return isinstance(getattr(self, self._last), (Bilinear, Identity))

    def upsample_scores(self, score: Tensor, size: tuple[int, int]) -> Tensor:
        """The last, fixed upsampling and crop: ``model(x, coarse=True)`` -> logits of ``size``
        (losses computed from the coarse scores a few images at a time use it)."""
        if not self.fixed_upsampling:
            raise ValueError(f"{self.variant}'s last upsampling ({self.upsample}) learns or needs features; call the model without coarse=True")
        return self._finish(score, {}, size)

    def _finish(self, score: Tensor, feats: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        c, (H, W) = self.crop_final, size
        return getattr(self, self._last)(score, feats)[..., c : c + H, c : c + W]

    def forward(self, x: Tensor, *, coarse: bool = False) -> Tensor:
        """``x``: ``(N, C, H, W)``, any ``H, W >= 32`` -> logits ``(N, num_classes, H, W)``;
        with ``coarse=True`` the scores before the last upsampling (see ``upsample_scores``)."""
        H, W = x.shape[-2:]
        feats = self.backbone(x)
        score = self.score_fr(feats["out"])
        if self.pre_pad:
            score = F.pad(score, (self.pre_pad,) * 4)
        if self.variant != "fcn32s":
            score = self.fuse(
                self.upscore2(score, feats), self.score_pool4(feats["pool4"]), self.crop_pool4
            )
        if self.variant not in ("fcn32s", "fcn16s"):
            score = self.fuse(
                self.upscore_pool4(score, feats), self.score_pool3(feats["pool3"]), self.crop_pool3
            )
        if self.variant == "fcn4s":  # no offsets: fcn4s has only the "same" alignment
            score = self.fuse(self.upscore_pool3(score, feats), self.score_pool2(feats["pool2"]), 0)
        return score if coarse else self._finish(score, feats, (H, W))


def _builder(variant: str):
    def build(
        *,
        backbone: str,
        num_classes: int,
        in_channels: int,
        upsample: str,
        align: str,
        output_stride: int,
        config: dict,
    ) -> FCN:
        trunk = build_backbone(
            backbone,
            in_channels=in_channels,
            align=align,
            output_stride=output_stride,
            with_fc=True,
            return_indices=upsample == "unpool",
        )
        return FCN(
            trunk,
            variant=variant,
            num_classes=num_classes,
            upsample=upsample,
            align=align,
            config=config,
        )

    build.__name__ = variant
    build.__doc__ = f"{variant.upper()[:3]}-{variant[3:]} (see ``fcnseg.models.build_model``)."
    return build


for _variant in VARIANTS:
    register_model(_variant)(_builder(_variant))
