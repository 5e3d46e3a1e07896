"""Print the model-zoo table: parameters and GFLOPs per image for the main combinations.

    .venv/bin/python benchmarks/model_zoo.py [--size 512] [--num-classes 21]

Models are built on the meta device (no memory, no compute) and their FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` for one ``size x size`` image (a multiply-add
counts 2; convolutions and transposed convolutions, not the cheap elementwise ops,
interpolation or unpooling).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from fcnseg import build_model

COMBOS = [
    # (model, backbone, upsample, extra)
    ("fcn32s", "vgg16", "deconv", {}),
    ("fcn16s", "vgg16", "deconv", {}),
    ("fcn8s", "vgg16", "deconv", {}),
    ("fcn8s", "vgg16", "deconv", {"align": "paper"}),
    ("fcn8s", "vgg16", "bilinear", {}),
    ("fcn8s", "vgg16", "unpool", {}),
    ("fcn8s", "vgg16_bn", "deconv", {}),
    ("fcn8s", "resnet18", "deconv", {}),
    ("fcn8s", "resnet34", "deconv", {}),
    ("fcn8s", "resnet50", "deconv", {}),
    ("fcn8s", "resnet50", "deconv", {"output_stride": 8}),
    ("fcn8s", "resnet101", "deconv", {}),
    ("seed", "vgg16", "deconv", {}),
    ("seed", "vgg16", "bilinear", {}),
    ("seed", "resnet18", "deconv", {}),
    ("seed", "resnet50", "deconv", {}),
]


def measure(name: str, backbone: str, upsample: str, extra: dict, size: int, num_classes: int):
    with torch.device("meta"):
        model = build_model(
            name, backbone=backbone, num_classes=num_classes, upsample=upsample, **extra
        )
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, size, size))
    return params, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default 21, VOC)")
    args = parser.parse_args()
    print(
        f"| model | backbone | upsample | options | parameters (M) | GFLOPs / {args.size}x{args.size} |"
    )
    print("|---|---|---|---|---:|---:|")
    for name, backbone, upsample, extra in COMBOS:
        params, flops = measure(name, backbone, upsample, extra, args.size, args.num_classes)
        options = ", ".join(f"{k}={v}" for k, v in extra.items()) or "-"
        print(
            f"| {name} | {backbone} | {upsample} | {options} | {params / 1e6:.2f} | {flops / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
