"""VGG16 / VGG16-BN trunk, written once for FCN-32s/16s/8s and the seed net.

``features.N`` indices are torchvision's (``vgg16``: convs at 0, 2, 5, ...; pools at 4, 9,
16, 23, 30), so its ImageNet checkpoints load after the fc6/fc7 reshape in
``fcnseg.weights``. fc6/fc7 are the classifier's first two Linear layers as convolutions
(7x7 and 1x1, 4096 channels), each followed by ReLU and Dropout2d, as in FCN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGGS = ("vgg16", "vgg16_bn")


class VGG(nn.Module):
    """VGG16 trunk returning ``conv1..5``, ``pool1..5``, ``out`` (and ``idx1..5``).

    ``align="same"``: 3x3 convs padded 1, 2x2 ceil-mode pools, fc6 padded 3, so a
    ``(H, W)`` input gives stride-``s`` maps of ``ceil(H/s)``. ``align="paper"``: conv1_1
    padded 100 and fc6 unpadded (Caffe FCN; maps are ``(H+198)/s``-ish, fc6 6 smaller).
    """

    geometry = "cell"

    def __init__(
        self,
        name: str = "vgg16",
        *,
        in_channels: int = 3,
        align: str = "same",
        with_fc: bool = True,
        return_indices: bool = False,
    ) -> None:
        super().__init__()
        if name not in VGGS:
            raise ValueError(f"unknown VGG {name!r}")
        self.name, self.batch_norm = name, name.endswith("_bn")
        self.align, self.with_fc, self.return_indices = align, with_fc, return_indices
        layers: list[nn.Module] = []
        c_in, first = in_channels, True
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=return_indices))
                continue
            pad = 100 if (first and align == "paper") else 1
            layers.append(nn.Conv2d(c_in, v, 3, padding=pad))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c_in, first = v, False
        self.features = nn.Sequential(*layers)

        chans = (64, 128, 256, 512, 512)
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        for k, c in enumerate(chans, 1):
            self.out_channels[f"conv{k}"] = self.out_channels[f"pool{k}"] = c
            self.strides[f"conv{k}"], self.strides[f"pool{k}"] = 2 ** (k - 1), 2**k
        self.levels = {k: (2 ** (k - 1), 2**k) for k in range(1, 6)}
        self.switch_channels = dict(enumerate(chans, 1)) if return_indices else {}

        if with_fc:
            # skip_init: fc6 alone is 102.8 M weights; initialise once, not twice
            dev = torch.get_default_device()  # honours `with torch.device("meta"):`
            pad6 = 0 if align == "paper" else 3
            self.fc6 = nn.utils.skip_init(nn.Conv2d, 512, 4096, 7, padding=pad6, device=dev)
            self.relu6 = nn.ReLU(inplace=True)
            self.drop6 = nn.Dropout2d()
            self.fc7 = nn.utils.skip_init(nn.Conv2d, 4096, 4096, 1, device=dev)
            self.relu7 = nn.ReLU(inplace=True)
            self.drop7 = nn.Dropout2d()
            self.out_channels["out"], self.strides["out"] = 4096, 32
        else:
            self.out_channels["out"], self.strides["out"] = 512, 32
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # torchvision's VGG init; fc6/fc7 get its Linear init (normal, std 0.01)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                if name in ("fc6", "fc7"):
                    m.weight.normal_(0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: ``(N, C, H, W)`` -> feature maps (see ``fcnseg.models.backbones``)."""
        feats: dict[str, Tensor] = {}
        k = 1
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                feats[f"conv{k}"] = x
                if self.return_indices:
                    x, feats[f"idx{k}"] = layer(x)
                else:
                    x = layer(x)
                feats[f"pool{k}"] = x
                k += 1
            else:
                x = layer(x)
        if self.with_fc:
            x = self.drop6(self.relu6(self.fc6(x)))
            x = self.drop7(self.relu7(self.fc7(x)))
        feats["out"] = x
        return feats

    def extra_repr(self) -> str:
        return f"name={self.name!r}, align={self.align!r}, with_fc={self.with_fc}"
