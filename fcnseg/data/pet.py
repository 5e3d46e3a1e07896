"""Oxford-IIIT Pet, official layout:

    ROOT/images/NAME.jpg
    ROOT/annotations/trimaps/NAME.png        1 = pet, 2 = background, 3 = border
    ROOT/annotations/{trainval,test}.txt     `NAME CLASS-ID SPECIES BREED-ID` lines

Trimaps map to pet (0), background (1), border (2) as the tutorial trains; with
`border="ignore"` there are two classes and the border becomes 255. Splits: the official
`trainval` and `test`, and `train` / `val` carved from trainval by a seeded split.
"""

from __future__ import annotations

import os

import numpy as np

from fcnseg.data import register_dataset
from fcnseg.data.base import (
    IGNORE_INDEX,
    LabelMap,
    SegmentationDataset,
    read_list,
    resolve_root,
    seeded_carve,
)
from fcnseg.errors import ConfigError

PET_CLASSES = ("pet", "background", "border")
PET_PALETTE = np.array([[128, 0, 0], [0, 0, 0], [255, 255, 255]], np.uint8)


@register_dataset("oxford-pet")
class OxfordPet(SegmentationDataset):
    splits = ("train", "val", "trainval", "test")
    check_splits = ("trainval", "test")
    download_hint = "run `fcnseg data download oxford-pet --root DIR`, or pass the right --data-root"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transforms=None,
        *,
        border: str = "class",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(split, transforms)
        if border not in ("class", "ignore"):
            raise ConfigError(f"oxford-pet: border={border!r}: use 'class' or 'ignore'")
        self.root = root = resolve_root(root, "oxford-pet", self.download_hint)
        self.border = border
        if border == "class":
            self.classes = PET_CLASSES
            self.palette = PET_PALETTE.copy()
            values = {1: 0, 2: 1, 3: 2}
        else:
            self.classes = PET_CLASSES[:2]
            self.palette = PET_PALETTE[:2].copy()
            values = {1: 0, 2: 1, 3: IGNORE_INDEX}
        self.label_map = LabelMap(
            values, hint="Oxford-IIIT Pet trimaps hold only 1, 2, 3: re-download the trimap"
        )
        ann = root / "annotations"
        list_name = "test" if split == "test" else "trainval"
        names = [ln.split()[0] for ln in read_list(ann / f"{list_name}.txt", self.download_hint)]
        if split in ("train", "val"):
            train, val = seeded_carve(names, val_fraction, seed)
            names = train if split == "train" else val
        self._finish(
            ((root / "images" / f"{n}.jpg", ann / "trimaps" / f"{n}.png") for n in names),
            root,
        )
