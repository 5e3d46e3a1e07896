"""What a binary folder dataset's masks score against changed copies of themselves: the best a
stride-s output can draw (the masks' class shares averaged over s x s cells, bilinearly
upsampled, argmax), and the thin class drawn 1 px thicker, thinner or shifted. Bounds for the
planned scores in docs/experiments/isbi-em.md.

    .venv/bin/python experiments/mask_bounds.py --masks ../shared/data/isbi-em-membrane/masks --fg 255
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage


def stride_view(fg: np.ndarray, s: int) -> np.ndarray:
    share = torch.from_numpy(fg.astype(np.float32))[None, None]
    up = F.interpolate(F.avg_pool2d(share, s), size=fg.shape, mode="bilinear", align_corners=False)
    return up[0, 0].numpy() > 0.5


CHANGES = {
    "stride 8": lambda fg: stride_view(fg, 8),
    "stride 4": lambda fg: stride_view(fg, 4),
    "stride 2": lambda fg: stride_view(fg, 2),
    "thin class 1 px thicker (3x3 dilation)": lambda fg: ~ndimage.binary_dilation(~fg),
    "thin class 1 px thinner (3x3 erosion)": lambda fg: ~ndimage.binary_erosion(~fg, border_value=1),
    "shifted 1 px sideways": lambda fg: np.roll(fg, 1, axis=1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=Path, required=True, help="folder of mask PNGs")
    ap.add_argument("--fg", type=int, default=255, help="the mask value of the wide class (the rest is the thin one)")
    args = ap.parse_args()
    masks = [np.array(Image.open(p).convert("L")) == args.fg for p in sorted(args.masks.glob("*.png"))]
    print(f"{len(masks)} masks in {args.masks}")
    print(f"{'the masks ...':45s} {'thin IoU':>9s} {'wide IoU':>9s} {'mean IU':>8s}")
    for name, change in CHANGES.items():
        inter, union = np.zeros(2), np.zeros(2)
        for fg in masks:
            p = change(fg)
            for c, (a, b) in enumerate(((~p, ~fg), (p, fg))):
                inter[c] += (a & b).sum()
                union[c] += (a | b).sum()
        iou = 100 * inter / union
        print(f"{name:45s} {iou[0]:9.2f} {iou[1]:9.2f} {iou.mean():8.2f}")


if __name__ == "__main__":
    main()
