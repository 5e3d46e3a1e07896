"""ResNet-18/34/50/101 (torchvision's V1.5 layout and state-dict keys, ``fc`` omitted).

``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by dilation, as
torchvision's ``replace_stride_with_dilation`` does for ``fcn_resnet50``; BasicBlocks
(resnet18/34) accept dilation here too (torchvision refuses; the keys do not change).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def zero_init_residual(module: nn.Module) -> int:
    """Sets the scale of the last BatchNorm of every residual branch in ``module`` to zero, so
    each block starts as the identity (Goyal et al., "Accurate, Large Minibatch SGD", 2017).
    An initialisation for training from scratch; returns the number of blocks changed."""
    n = 0
    with torch.no_grad():
        for m in module.modules():
            bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
            if bn is not None:
                bn.weight.zero_()
                n += 1
    return n


class ResNet(nn.Module):
    """ResNet trunk returning ``conv2..5``, ``pool2..5``, ``out``, ``layer1..4`` (and ``idx2..5``).

    ResNets downsample with strided convolutions and have one max-pool (after the stem).
    With ``return_indices`` the stem pool's switches are ``idx2``; for the strided stages
    ``idx3..5`` are the switches a 2x2 max-pool on the finer map (layer1..3) would record:
    the arg-max positions of the encoder activation in each 2x2 window, which is what
    SegNet-style unpooling needs. A ``(H, W)`` input gives stride-``s`` maps of ``ceil(H/s)``.
    """

    geometry = "corner"

    def __init__(
        self,
        name: str = "resnet50",
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        return_indices: bool = False,
    ) -> None:
        super().__init__()
        if name not in _SPECS:
            raise ValueError(f"unknown ResNet {name!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        block, counts = _SPECS[name]
        self.name, self.output_stride, self.return_indices = name, output_stride, return_indices
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1, return_indices=return_indices)
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[
            output_stride
        ]
        self._c_in, self._dilation = 64, 1
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2, dilate=dilate[2])

        e = block.expansion
        s3 = 8 if dilate[1] else 16
        s4 = 8 if dilate[1] else (16 if dilate[2] else 32)
        chans = {"conv2": 64, "conv3": 64 * e, "conv4": 128 * e, "conv5": 256 * e}
        chans |= {"pool2": 64 * e, "pool3": 128 * e, "pool4": 256 * e, "pool5": 512 * e, "out": 512 * e}
        chans |= {"layer1": 64 * e, "layer2": 128 * e, "layer3": 256 * e, "layer4": 512 * e}
        strides = {"conv2": 2, "conv3": 4, "conv4": 8, "conv5": s3}
        strides |= {"pool2": 4, "pool3": 8, "pool4": s3, "pool5": s4, "out": s4}
        strides |= {"layer1": 4, "layer2": 8, "layer3": s3, "layer4": s4}
        self.out_channels: dict[str, int] = chans
        self.strides: dict[str, int] = strides
        self.levels = {1: (1, 2), 2: (2, 4), 3: (4, 8), 4: (8, s3), 5: (s3, s4)}
        self.switch_channels: dict[int, int] = {}
        if return_indices:
            self.switch_channels = {
                k: chans[f"conv{k}"] for k, (a, b) in self.levels.items() if k >= 2 and b > a
            }
        self._init_weights()

    def _make_layer(
        self,
        block: type[nn.Module],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._c_in != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._c_in, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._c_in, planes, stride, downsample, previous_dilation)]
        self._c_in = planes * block.expansion
        layers += [block(self._c_in, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: ``(N, C, H, W)`` -> feature maps (see ``fcnseg.models.backbones``)."""
        feats: dict[str, Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        feats["conv2"] = x
        if self.return_indices:
            x, feats["idx2"] = self.maxpool(x)
        else:
            x = self.maxpool(x)
        for k, layer in ((3, self.layer1), (4, self.layer2), (5, self.layer3), (6, self.layer4)):
            x = layer(x)
            feats[f"layer{k - 2}"] = x
            if k <= 5:
                feats[f"conv{k}"] = x
                if k in self.switch_channels:
                    _, feats[f"idx{k}"] = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            if k >= 3:
                feats[f"pool{k - 1}"] = x
        feats["out"] = x
        return feats

    def extra_repr(self) -> str:
        return f"name={self.name!r}, output_stride={self.output_stride}"
