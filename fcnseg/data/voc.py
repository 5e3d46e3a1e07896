"""PASCAL VOC 2012 and the Semantic Boundaries Dataset (SBD), 21 classes, 255 = ignore.

VOC (ROOT may be the VOC2012 folder, its parent, or the folder holding VOCdevkit/):

    VOC2012/JPEGImages/NAME.jpg
    VOC2012/SegmentationClass/NAME.png       palette PNG: pixel values are class indices
    VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

The palette PNGs are read as indices (never converted to RGB); masks someone saved as RGB
are mapped back through the VOC colour map. Split `seg11valid` is the FCN paper's 736
VOC2011 val images that are not in SBD train (list shipped in fcnseg/data/lists, from
the authors' fcn.berkeleyvision.org / BVLC caffe `data/pascal/seg11valid.txt`); any split
can be replaced by a list file of your own with `list_file=PATH`.

SBD (ROOT may be `benchmark_RELEASE`, its parent, or the `dataset` folder itself):

    dataset/img/NAME.jpg, dataset/cls/NAME.mat (GTcls.Segmentation), dataset/{train,val}.txt

Split `train_aug` (needs `voc_root=`): VOC train + SBD train + SBD val, minus VOC val
(10582 images with the full data); a VOC annotation is used where one exists, since it
marks object borders as 255, else the SBD one.
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
    make_palette,
    mask_to_array,
    open_image,
    read_list,
    resolve_root,
)
from fcnseg.errors import ConfigError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_PALETTE = make_palette(21)
VOC_BORDER_COLOR = (224, 224, 192)  # the palette entry of index 255
LISTS = Path(__file__).with_name("lists")
SEG11VALID = LISTS / "seg11valid.txt"

VOC_HINT = "run `fcnseg data download voc --root DIR`, or pass the folder holding VOC2012 as --data-root"
SBD_HINT = (
    "run `fcnseg data download sbd --root DIR`, or pass the folder holding "
    "benchmark_RELEASE/dataset as --data-root"
)


def voc_label_map() -> LabelMap:
    values = {**{i: i for i in range(21)}, IGNORE_INDEX: IGNORE_INDEX}
    colors = {tuple(int(c) for c in VOC_PALETTE[i]): i for i in range(21)}
    colors[VOC_BORDER_COLOR] = IGNORE_INDEX
    return LabelMap(
        values, colors, hint="VOC masks hold 0..20 and 255; re-extract SegmentationClass"
    )


def find_voc_base(root: Path) -> Path:
    """The VOC2012 folder (holding JPEGImages/) under `root`."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise data_error(
        f"voc: {root} does not look like PASCAL VOC 2012 (no JPEGImages/ in it, in VOC2012/ "
        "or in VOCdevkit/VOC2012/)",
        root,
        "empty-root",
        VOC_HINT,
    )


def find_sbd_base(root: Path) -> Path:
    """The SBD `dataset` folder (holding img/ and cls/) under `root`."""
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "img").is_dir():
            return cand
    raise data_error(
        f"sbd: {root} does not look like SBD (no img/ and cls/ in it, in dataset/ or in "
        "benchmark_RELEASE/dataset/)",
        root,
        "empty-root",
        SBD_HINT,
    )


def read_sbd_mat(path: Path) -> np.ndarray:
    """`GTcls.Segmentation` of an SBD .mat file: uint8 (H, W) class indices."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise data_error(f"{path}: mask file not found", path, "missing-mask") from None
    except Exception as e:  # scipy raises many types on corrupt files
        raise data_error(
            f"{path}: cannot read GTcls.Segmentation ({type(e).__name__}: {e})",
            path,
            "unreadable",
            "re-extract the SBD archive, or leave the pair out",
        ) from None
    if seg.ndim != 2:
        raise data_error(
            f"{path}: GTcls.Segmentation has shape {seg.shape}, expected (H, W)", path, "unreadable"
        )
    return seg


class _VocLike(SegmentationDataset):
    def _setup_classes(self) -> None:
        self.classes = VOC_CLASSES
        self.palette = VOC_PALETTE.copy()
        self.label_map = voc_label_map()

    def read_mask_raw(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".mat":
            return read_sbd_mat(path)
        return mask_to_array(open_image(path, "mask"))  # palette PNG -> indices


@register_dataset("voc")
class VOC(_VocLike):
    splits = ("train", "val", "trainval", "seg11valid")
    check_splits = ("trainval",)
    download_hint = VOC_HINT

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transforms=None,
        *,
        list_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(split, transforms)
        self.root = resolve_root(root, "voc", self.download_hint)
        self._setup_classes()
        base = self.base = find_voc_base(self.root)
        if list_file is not None:
            names = read_list(Path(list_file), "pass an existing list file (one image id a line)")
        elif split == "seg11valid":
            names = read_list(SEG11VALID, "reinstall fcnseg: its list file is missing")
        else:
            names = read_list(base / "ImageSets" / "Segmentation" / f"{split}.txt", VOC_HINT)
        self._finish(
            (
                (base / "JPEGImages" / f"{n}.jpg", base / "SegmentationClass" / f"{n}.png")
                for n in (ln.split()[0] for ln in names)
            ),
            base,
        )


@register_dataset("sbd")
class SBD(_VocLike):
    splits = ("train", "val", "train_aug")
    check_splits = ("train", "val")
    download_hint = SBD_HINT

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transforms=None,
        *,
        voc_root: str | os.PathLike | None = None,
        list_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(split, transforms)
        self.root = resolve_root(root, "sbd", self.download_hint)
        self._setup_classes()
        base = self.base = find_sbd_base(self.root)

        def sbd_pair(n: str) -> tuple[Path, Path]:
            return base / "img" / f"{n}.jpg", base / "cls" / f"{n}.mat"

        if list_file is not None:
            names = read_list(Path(list_file), "pass an existing list file (one image id a line)")
            self._finish((sbd_pair(n.split()[0]) for n in names), base)
            return
        if split != "train_aug":
            self._finish((sbd_pair(n) for n in read_list(base / f"{split}.txt", SBD_HINT)), base)
            return
        if voc_root is None:
            raise ConfigError(
                "sbd split 'train_aug' needs the VOC 2012 root too: pass voc_root=DIR "
                "(the folder holding VOC2012)"
            )
        voc = find_voc_base(resolve_root(voc_root, "voc", VOC_HINT))
        seg = voc / "ImageSets" / "Segmentation"
        voc_train = read_list(seg / "train.txt", VOC_HINT)
        voc_val = set(read_list(seg / "val.txt", VOC_HINT))
        sbd_all = read_list(base / "train.txt", SBD_HINT) + read_list(base / "val.txt", SBD_HINT)
        names = sorted((set(voc_train) | set(sbd_all)) - voc_val)
        pairs = []
        for n in names:
            voc_img, voc_mask = (
                voc / "JPEGImages" / f"{n}.jpg",
                voc / "SegmentationClass" / f"{n}.png",
            )
            if voc_mask.is_file():  # VOC's annotation marks borders as ignore: prefer it
                pairs.append((voc_img, voc_mask))
            else:
                pairs.append(sbd_pair(n))
        self._finish(pairs, base)
