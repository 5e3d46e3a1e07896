"""Backbones: ImageNet classifiers cut into feature extractors, torchvision state-dict keys.

The contract every head relies on (and nothing else):

* ``forward(x: (N, C, H, W)) -> dict[str, Tensor]`` of named feature maps;
* ``out_channels: dict[str, int]`` and ``strides: dict[str, int]`` for those names;
* ``geometry``: ``"cell"`` or ``"corner"`` (where a stride-``s`` pixel sits, see
  ``fcnseg/models/upsample.py``);
* ``levels: dict[int, (stride_in, stride_out)]``: the five 2x downsampling steps
  (``stride_out == stride_in`` where a ResNet stage is dilated instead);
  ``switch_channels: dict[int, int]``: levels whose pooling switches are returned as
  ``idx{k}`` when built with ``return_indices=True``.

Common names (all backbones):

=========  ==========================  ==========================
name       VGG16                       ResNet
=========  ==========================  ==========================
``conv2``  conv2_2 (stride 2)          stem conv1+bn1+relu (stride 2)
``conv3``  conv3_3 (stride 4)          layer1 (stride 4)
``conv4``  conv4_3 (stride 8)          layer2 (stride 8)
``conv5``  conv5_3 (stride 16)         layer3 (stride 16, or 8 dilated)
``pool2``  pool2 (stride 4)            layer1 (stride 4)
``pool3``  pool3 (stride 8)            layer2 (stride 8)
``pool4``  pool4 (stride 16)           layer3 (stride 16, or 8 dilated)
``pool5``  pool5 (stride 32)           layer4 (stride 32, or 16/8 dilated)
``out``    fc7 (or pool5 w/o fc)       layer4
=========  ==========================  ==========================

``conv{k}`` is the last map before the stride changes at level ``k`` (the seed net's
skips), ``pool{k}`` the first map after it (FCN's skips), ``out`` the map the FCN score
layer reads. VGG also gives ``conv1``/``pool1``; ResNets also ``layer1``..``layer4``.
"""

from __future__ import annotations

from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.models.backbones.resnet import RESNETS, ResNet
from fcnseg.models.backbones.vgg import VGG, VGGS

BACKBONES: tuple[str, ...] = (*VGGS, *RESNETS)


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    align: str = "same",
    output_stride: int = 32,
    with_fc: bool = True,
    return_indices: bool = False,
) -> nn.Module:
    """A randomly initialised backbone (weights are loaded by ``fcnseg.weights``).

    ``with_fc`` (VGG only): add fc6 (7x7 conv, 4096) and fc7 (1x1 conv, 4096) as in FCN.
    ``align="paper"`` (VGG only): conv1_1 padding 100 and an unpadded fc6 (Caffe FCN).
    ``output_stride`` 8 or 16 (ResNet only) dilates layer3/layer4 instead of striding.
    """
    if name in VGGS:
        if output_stride != 32:
            raise ConfigError(
                f"output_stride={output_stride} needs a ResNet backbone; {name} only has "
                "output_stride=32 (use backbone='resnet50' or output_stride=32)"
            )
        return VGG(
            name,
            in_channels=in_channels,
            align=align,
            with_fc=with_fc,
            return_indices=return_indices,
        )
    if name in RESNETS:
        if align != "same":
            raise ConfigError(
                f"align={align!r} is the Caffe VGG16 geometry; backbone {name!r} only supports "
                "align='same'"
            )
        return ResNet(
            name,
            in_channels=in_channels,
            output_stride=output_stride,
            return_indices=return_indices,
        )
    raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "ResNet", "VGG", "build_backbone"]
