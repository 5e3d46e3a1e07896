"""Cityscapes, fine annotations, 19 training classes:

    ROOT/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png     label ids 0..33

Label ids are mapped to the 19 official train ids; every other id becomes 255.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fcnseg.data import register_dataset
from fcnseg.data.base import (
    IGNORE_INDEX,
    LabelMap,
    SegmentationDataset,
    data_error,
    resolve_root,
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = np.array(
    [
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
        [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
        [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
        [0, 80, 100], [0, 0, 230], [119, 11, 32],
    ],
    np.uint8,
)  # fmt: skip
# label id -> train id (cityscapesScripts helpers/labels.py); all other ids 0..33 -> 255
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
HINT = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com (login needed), unzip both into one folder and pass "
    "it as --data-root"
)


@register_dataset("cityscapes")
class Cityscapes(SegmentationDataset):
    splits = ("train", "val", "test")
    check_splits = ("train", "val", "test")
    download_hint = HINT

    def __init__(
        self, root: str | os.PathLike | None = None, split: str = "train", transforms=None
    ) -> None:
        super().__init__(split, transforms)
        self.root = root = resolve_root(root, "cityscapes", self.download_hint)
        self.classes = CITYSCAPES_CLASSES
        self.palette = CITYSCAPES_PALETTE.copy()
        values = {i: LABEL_TO_TRAIN.get(i, IGNORE_INDEX) for i in range(34)}
        self.label_map = LabelMap(
            values, hint="gtFine *_labelIds.png hold ids 0..33; check that it is a labelIds file"
        )
        img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_dir.is_dir():
            raise data_error(
                f"cityscapes: split {split!r} not found: no folder {img_dir}",
                img_dir,
                "missing-split",
                HINT,
            )
        images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        stems = {(p.parent.name, p.name[: -len(IMAGE_SUFFIX)]) for p in images}
        pairs: list[tuple[Path, Path]] = [
            (p, gt_dir / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + MASK_SUFFIX))
            for p in images
        ]
        if gt_dir.is_dir():
            for m in sorted(gt_dir.glob(f"*/*{MASK_SUFFIX}")):
                key = (m.parent.name, m.name[: -len(MASK_SUFFIX)])
                if key not in stems:
                    pairs.append((img_dir / key[0] / (key[1] + IMAGE_SUFFIX), m))
        self._finish(pairs, root)
