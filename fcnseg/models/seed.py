"""``seed``: the tutorial's own network (the Keras code at the end of the
tutorial's text, ``../shared/seed/fcn_tutorial_zh.txt`` beside a checkout), in PyTorch, returning logits instead of a softmax.

VGG16 conv trunk, then from pool5 (block5_pool)::

    up5   ConvTranspose 3x3 s2 -> 512, ReLU;  conv5  Conv 3x3 512, ReLU;  + conv5_3
    up4   ConvTranspose 3x3 s2 -> 512, ReLU;                               + conv4_3
    up3   ConvTranspose 3x3 s2 -> 256, ReLU;  conv3  Conv 3x3 256, ReLU;  + conv3_3
    up2   ConvTranspose 3x3 s2 -> 128, ReLU;  conv2  Conv 3x3 128, ReLU
    up1   ConvTranspose 3x3 s2 -> num_classes (logits)

Keras' ``padding='same'`` transposed conv is ``ConvTranspose2d(3, stride=2, padding=1,
output_padding=1)`` (output exactly 2x). Odd sizes: every upsampled map is cropped to its
skip (ceil-mode pools make it at most one pixel larger), the logits to the input.

Other backbones feed the same taps (``conv5``, ``conv4``, ``conv3`` and ``out``); the
decoder widths are the taps' channel counts ``(c5, c4, c3, c3 // 2)`` — for VGG16 exactly
the tutorial's ``(512, 512, 256, 128)`` — so every addition is channel-exact without
projections. A stage whose strides are equal (dilated ResNet, ``output_stride`` 8/16) uses
a stride-1 3x3 conv instead. ``upsample="bilinear"``: fixed 2x interpolation then a 3x3
conv to the new width ("resize-conv", same parameters as the 3x3 transposed conv);
``upsample="unpool"``: a 1x1 projection to the switches' channels (where they differ), 2x
max-unpooling through the backbone's switches, then the 3x3 conv.
"""

from __future__ import annotations

from torch import Tensor, nn

from fcnseg.errors import ConfigError
from fcnseg.models import register_model
from fcnseg.models.backbones import build_backbone
from fcnseg.models.upsample import interpolate, levels_between, unpool


class UpConv(nn.Module):
    """A 2x (or 1x) upsampling step that also changes channels: ``(N, c_in, h, w)`` ->
    ``(N, c_out, ~2h, ~2w)`` (``2h``, or the pre-pool size when unpooling)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        mode: str,
        factor: int,
        level: int | None,
        switch_channels: int | None,
        geometry: str,
    ) -> None:
        super().__init__()
        if factor not in (1, 2):
            raise ValueError(f"seed decoder steps are 1x or 2x, not {factor}x")
        self.mode, self.factor, self.level, self.geometry = mode, factor, level, geometry
        self.proj: nn.Module = nn.Identity()
        if factor == 1:
            self.conv: nn.Module = nn.Conv2d(c_in, c_out, 3, padding=1)
        elif mode == "deconv":
            self.conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        elif mode == "unpool" and switch_channels is not None:
            if switch_channels != c_in:
                self.proj = nn.Conv2d(c_in, switch_channels, 1)
            self.conv = nn.Conv2d(switch_channels, c_out, 3, padding=1)
        elif mode in ("bilinear", "unpool"):  # unpool without switches: resize-conv
            self.mode = "bilinear"
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        else:
            raise ValueError(f"unknown upsample mode {mode!r}")

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        if self.factor == 1 or self.mode == "deconv":
            return self.conv(x)
        if self.mode == "bilinear":
            return self.conv(interpolate(x, 2, self.geometry))
        k = self.level
        return self.conv(unpool(self.proj(x), feats[f"idx{k}"], feats[f"conv{k}"].shape[-2:]))


class Seed(nn.Module):
    """The tutorial's net: ``forward(x: (N, C, H, W)) -> logits (N, num_classes, H, W)``."""

    def __init__(
        self, backbone: nn.Module, *, num_classes: int, upsample: str, config: dict
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = dict(config)
        ch, st = backbone.out_channels, backbone.strides
        c5, c4, c3 = ch["conv5"], ch["conv4"], ch["conv3"]
        c2 = c3 // 2
        relu = nn.ReLU(inplace=True)

        def up(c_in: int, c_out: int, from_stride: int, to_stride: int) -> UpConv:
            levels = levels_between(backbone, from_stride, to_stride)
            level, switches = levels[0] if levels else (None, None)
            return UpConv(
                c_in,
                c_out,
                mode=upsample,
                factor=from_stride // to_stride,
                level=level,
                switch_channels=switches,
                geometry=backbone.geometry,
            )

        self.up5 = up(ch["out"], c5, st["out"], st["conv5"])
        self.conv5 = nn.Conv2d(c5, c5, 3, padding=1)
        self.up4 = up(c5, c4, st["conv5"], st["conv4"])
        self.up3 = up(c4, c3, st["conv4"], st["conv3"])
        self.conv3 = nn.Conv2d(c3, c3, 3, padding=1)
        self.up2 = up(c3, c2, st["conv3"], st["conv3"] // 2)
        self.conv2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.up1 = up(c2, num_classes, st["conv3"] // 2, 1)
        self.relu = relu

    @staticmethod
    def _crop(x: Tensor, ref: Tensor) -> Tensor:
        return x[..., : ref.shape[-2], : ref.shape[-1]]

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)``, any ``H, W >= 32`` -> logits ``(N, num_classes, H, W)``."""
        H, W = x.shape[-2:]
        f = self.backbone(x)
        r, crop = self.relu, self._crop
        y = crop(r(self.up5(f["out"], f)), f["conv5"])
        y = r(self.conv5(y)) + f["conv5"]
        y = crop(r(self.up4(y, f)), f["conv4"]) + f["conv4"]
        y = crop(r(self.up3(y, f)), f["conv3"])
        y = r(self.conv3(y)) + f["conv3"]
        y = r(self.conv2(r(self.up2(y, f))))
        y = self.up1(y, f)
        return y[..., :H, :W]


@register_model("seed")
def seed(
    *,
    backbone: str,
    num_classes: int,
    in_channels: int,
    upsample: str,
    align: str,
    output_stride: int,
    config: dict,
) -> Seed:
    """The tutorial's net (see module doc and ``fcnseg.models.build_model``)."""
    if align != "same":
        raise ConfigError(
            f"align={align!r} is the Caffe FCN geometry; model 'seed' only supports align='same'"
        )
    trunk = build_backbone(
        backbone,
        in_channels=in_channels,
        align=align,
        output_stride=output_stride,
        with_fc=False,
        return_indices=upsample == "unpool",
    )
    return Seed(trunk, num_classes=num_classes, upsample=upsample, config=config)
