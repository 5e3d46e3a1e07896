"""``fpn``: FCN's skip pattern with the fusion done on features instead of class scores.

FCN-8s/4s fuse *scores*: each skip is a 1x1 conv to ``num_classes`` channels and the maps
are summed, so the fusion is linear and a stride-4 skip sees only what its own shallow
features say. Here each tap (``pool5``, ``pool4``, ``pool3``, ``pool2``: strides 32 to 4)
gets a 1x1 *lateral* conv to ``width`` channels; going from coarse to fine, the running
map is upsampled, added to the next lateral and passed through a 3x3 conv + BatchNorm +
ReLU, so deep context and fine detail are combined non-linearly before one 1x1 score
layer at stride 4 (the top-down pathway of Lin et al., "Feature Pyramid Networks", 2017,
with the output of its finest level only). Upsampling (``upsample``) and the pixel
geometry are those of the FCN heads (``fcnseg/models/upsample.py``); the trunk has no
fc6/fc7 (``with_fc=False``). ``width`` 64 keeps the stride-4 3x3 conv at ~6 % of a
ResNet-18's convolution cost.
"""

from __future__ import annotations

from torch import Tensor, nn

from fcnseg.errors import ConfigError
from fcnseg.models import register_model
from fcnseg.models.backbones import build_backbone
from fcnseg.models.upsample import Bilinear, Identity, make_upsampler

TAPS = ("pool5", "pool4", "pool3", "pool2")  # coarse to fine
WIDTH = 64


class FPN(nn.Module):
    """``forward(x: (N, C, H, W)) -> logits (N, num_classes, H, W)``."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, upsample: str, config: dict, width: int = WIDTH) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = dict(config)
        ch, st = backbone.out_channels, backbone.strides
        geometry = backbone.geometry
        self.lateral = nn.ModuleList(nn.Conv2d(ch[k], width, 1) for k in TAPS)
        self.up = nn.ModuleList(
            make_upsampler(upsample, width, backbone=backbone, from_stride=st[a], to_stride=st[b], geometry=geometry)
            for a, b in zip(TAPS[:-1], TAPS[1:], strict=True)
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for _ in TAPS
        )
        self.score = nn.Conv2d(width, num_classes, 1)
        self.upscore = make_upsampler(upsample, num_classes, backbone=backbone, from_stride=st[TAPS[-1]], to_stride=1, geometry=geometry)

    @property
    def fixed_upsampling(self) -> bool:
        """Whether the last upsampling is fixed (see ``FCN.fixed_upsampling``)."""
        return isinstance(self.upscore, (Bilinear, Identity))

    def upsample_scores(self, score: Tensor, size: tuple[int, int]) -> Tensor:
        """The last, fixed upsampling and crop (see ``FCN.upsample_scores``)."""
        if not self.fixed_upsampling:
            raise ValueError(f"fpn's last upsampling ({type(self.upscore).__name__}) learns or needs features; call the model without coarse=True")
        return self.upscore(score, {})[..., : size[0], : size[1]]

    def forward(self, x: Tensor, *, coarse: bool = False) -> Tensor:
        """``x``: ``(N, C, H, W)``, any ``H, W >= 32`` -> logits ``(N, num_classes, H, W)``;
        with ``coarse=True`` the scores before the last upsampling."""
        H, W = x.shape[-2:]
        feats = self.backbone(x)
        y = self.smooth[0](self.lateral[0](feats[TAPS[0]]))
        for i in range(1, len(TAPS)):
            lat = self.lateral[i](feats[TAPS[i]])
            up = self.up[i - 1](y, feats)[..., : lat.shape[-2], : lat.shape[-1]]  # ceil-mode maps: crop to the skip
            y = self.smooth[i](lat + up)
        score = self.score(y)
        return score if coarse else self.upscore(score, feats)[..., :H, :W]


@register_model("fpn")
def fpn(*, backbone: str, num_classes: int, in_channels: int, upsample: str, align: str, output_stride: int, config: dict) -> FPN:
    """FCN skips fused on features (see the module doc)."""
    if align != "same":
        raise ConfigError(f"align={align!r} is the Caffe FCN geometry; model 'fpn' only supports align='same'")
    trunk = build_backbone(
        backbone, in_channels=in_channels, align=align, output_stride=output_stride,
        with_fc=False, return_indices=upsample == "unpool",
    )
    return FPN(trunk, num_classes=num_classes, upsample=upsample, config=config)
