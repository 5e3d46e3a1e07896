"""Datasets: registry, each real layout (tiny copies written by tests/datagen.py), the real
files in ../shared/data when present, decoding of odd image modes, bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datagen import make_camvid, make_pet, random_image, truncate, write_gray, write_rgb
from PIL import Image

from fcnseg.data import build_dataset, list_datasets, register_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.errors import ConfigError, DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def all_values(ds) -> set[int]:
    return set(np.unique(np.concatenate([ds.load(i)[1].ravel() for i in range(len(ds))])).tolist())


# ------------------------------------------------------------------ registry


def test_registry_lists_every_layout():
    assert list_datasets() == ["camvid", "cityscapes", "folder", "oxford-pet", "sbd", "synthetic", "voc"]


def test_unknown_dataset_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        build_dataset("nope")
    with pytest.raises(ConfigError, match="no option 'colour'"):
        build_dataset("synthetic", colour=3)
    with pytest.raises(ConfigError, match="no split 'bogus'"):
        build_dataset("synthetic", split="bogus")
    with pytest.raises(ConfigError, match="border"):
        build_dataset("synthetic", border="maybe")


def test_register_twice_refused():
    with pytest.raises(ValueError, match="twice"):
        register_dataset("synthetic")(type("X", (), {}))


def test_missing_and_empty_root_name_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist.*fcnseg data download oxford-pet"):
        build_dataset("oxford-pet", root=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*is empty") as e:
        build_dataset("camvid", root=empty)
    assert e.value.kind == "empty-root" and e.value.path == empty


# ------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_per_index_and_order_free():
    a = build_dataset("synthetic", split="train", length=20)
    b = build_dataset("synthetic", split="train", length=20)
    for i in (7, 3, 19, 0):  # any order, a fresh instance: same pairs
        ia, ma = a.load(i)
        ib, mb = b.load(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not np.array_equal(a.load(1)[0], a.load(2)[0])
    val = build_dataset("synthetic", split="val")
    assert not np.array_equal(a.load(0)[0], val.load(0)[0])  # splits differ
    other = build_dataset("synthetic", split="train", seed=1)
    assert not np.array_equal(a.load(0)[0], other.load(0)[0])


def test_synthetic_contract_and_class_balance():
    ds = build_dataset("synthetic", split="val", size=(96, 112))
    assert len(ds) == 64 and len(build_dataset("synthetic")) == 512
    assert ds.classes == ("pet", "background", "border") and ds.num_classes == 3
    assert ds.palette.shape == (3, 3) and ds.palette.dtype == np.uint8 and ds.ignore_index == 255
    counts = np.zeros(3)
    for i in range(16):
        img, mask = ds.load(i)
        assert img.shape == (96, 112, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 112) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2}
        counts += np.bincount(mask.ravel(), minlength=3)
    frac = counts / counts.sum()
    assert 0.05 < frac[0] < 0.5 and 0.4 < frac[1] < 0.9 and 0.02 < frac[2] < 0.2
    two = build_dataset("synthetic", border="ignore", length=4)
    assert two.num_classes == 2 and set(np.unique(two.load(0)[1])) <= {0, 1, 255}


def test_synthetic_classes_differ_in_texture_not_mean_colour():
    """Foreground and background have similar mean colour but very different local
    high-frequency energy, so the task needs texture, and is learnable."""
    ds = build_dataset("synthetic", length=32)
    fg_mean, bg_mean, fg_hf, bg_hf = [], [], [], []
    for i in range(32):
        img, mask = ds.load(i)
        g = img.astype(np.float32).mean(2)
        hf = np.abs(g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
        m = mask[1:-1, 1:-1]
        fg_mean.append(img[mask == 0].mean(0))
        bg_mean.append(img[mask == 1].mean(0))
        fg_hf.append(hf[m == 0].mean())
        bg_hf.append(hf[m == 1].mean())
    assert np.abs(np.mean(fg_mean, 0) - np.mean(bg_mean, 0)).max() < 30
    assert np.mean(fg_hf) > 2.5 * np.mean(bg_hf)
    assert (np.array(fg_hf) > 1.5 * np.array(bg_hf)).all()


def test_synthetic_border_wide_enough_for_a_stride8_fcn():
    """A predictor that only sees the labels at 1/8 resolution (the FCN-8s output grid),
    upsampled bilinearly, must still be able to score >= 0.9 mean IU: the border band is
    wide enough for the 0.9 target to be reachable at the default size."""
    import torch.nn.functional as F

    from fcnseg.metrics import ConfusionMatrix

    ds = build_dataset("synthetic", split="val", length=32)
    cm = ConfusionMatrix(3)
    for i in range(len(ds)):
        y = torch.from_numpy(ds.load(i)[1]).long()
        onehot = F.one_hot(y, 3).permute(2, 0, 1)[None].float()
        up = F.interpolate(F.avg_pool2d(onehot, 8), size=y.shape, mode="bilinear")
        cm.update(up.argmax(1), y[None])
    assert cm.compute()["mean_iou"] > 0.91


def test_synthetic_with_transforms_gives_tensors():
    ds = build_dataset("synthetic", length=3, transforms=eval_transforms(mean=MEAN, std=STD))
    x, y = ds[1]
    assert x.shape == (3, 128, 128) and x.dtype == torch.float32
    assert y.shape == (128, 128) and y.dtype == torch.int64


# ------------------------------------------------------------------ oxford-pet


def test_pet_layout_splits_and_trimap_mapping(pet_root):
    tv = build_dataset("oxford-pet", root=pet_root, split="trainval")
    test = build_dataset("oxford-pet", root=pet_root, split="test")
    train = build_dataset("oxford-pet", root=pet_root, split="train")
    val = build_dataset("oxford-pet", root=pet_root, split="val", val_fraction=0.2)
    assert (len(tv), len(test), len(train)) == (10, 3, 9)
    assert len(val) == 2
    names = lambda d: {p[0].stem for p in d.samples}  # noqa: E731
    assert names(train) | names(build_dataset("oxford-pet", root=pet_root, split="val")) == names(
        tv
    )
    assert not names(train) & names(build_dataset("oxford-pet", root=pet_root, split="val"))
    # seeded carve: deterministic, seed-dependent
    assert names(val) == names(
        build_dataset("oxford-pet", root=pet_root, split="val", val_fraction=0.2)
    )
    other = [
        names(build_dataset("oxford-pet", root=pet_root, split="val", val_fraction=0.2, seed=s))
        for s in range(5)
    ]
    assert any(o != names(val) for o in other)
    img, mask = tv.load(0)
    raw = np.asarray(Image.open(tv.samples[0][1]))
    assert np.array_equal(mask, np.choose(raw - 1, [0, 1, 2]))
    assert tv.classes == ("pet", "background", "border")
    assert all_values(tv) == {0, 1, 2}
    ign = build_dataset("oxford-pet", root=pet_root, split="trainval", border="ignore")
    assert ign.num_classes == 2 and all_values(ign) == {0, 1, 255}


def test_pet_real_mini_copy(shared_data):
    root = shared_data / "oxford-pet-mini"
    if not root.is_dir():
        pytest.skip("oxford-pet-mini absent")
    tv = build_dataset("oxford-pet", root=root, split="trainval")
    test = build_dataset("oxford-pet", root=root, split="test")
    assert (len(tv), len(test)) == (20, 6)
    assert all_values(tv) | all_values(test) == {0, 1, 2}
    img, mask = tv.load(0)
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[:2] == mask.shape


# ------------------------------------------------------------------ camvid


def test_camvid_lists_with_absolute_segnet_paths(camvid_root):
    ds = build_dataset("camvid", root=camvid_root, split="train")
    assert len(ds) == 4 and ds.num_classes == 11 and ds.palette.shape == (11, 3)
    assert all(p[0].parent == camvid_root / "train" for p in ds.samples)
    img, mask = ds.load(0)
    raw = np.asarray(Image.open(ds.samples[0][1]))
    assert np.array_equal(mask == 255, raw == 11)
    assert np.array_equal(mask[raw < 11], raw[raw < 11])
    assert len(build_dataset("camvid", root=camvid_root, split="trainval")) == 6
    assert len(build_dataset("camvid", root=camvid_root, split="test")) == 2


def test_camvid_without_lists_pairs_folders(tmp_path):
    root = make_camvid(tmp_path / "cv", counts={"train": 3, "val": 1}, lists=False)
    ds = build_dataset("camvid", root=root, split="train")
    assert len(ds) == 3 and all(i.name == m.name for i, m in ds.samples)
    with pytest.raises(DataError, match="split 'test' not found"):
        build_dataset("camvid", root=root, split="test")


def test_camvid_real_copy(shared_data):
    root = shared_data / "camvid"
    if not root.is_dir():
        pytest.skip("camvid absent")
    train = build_dataset("camvid", root=root, split="train")
    val = build_dataset("camvid", root=root, split="val")
    assert (len(train), len(val)) == (367, 101)
    assert not train.unpaired and not val.unpaired
    img, mask = val.load(0)
    assert img.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert set(np.unique(mask)) <= set(range(11)) | {255}


# ------------------------------------------------------------------ bad files


def test_missing_mask_left_out_and_recorded(pet_root):
    (pet_root / "annotations" / "trimaps" / "beagle_1.png").unlink()
    ds = build_dataset("oxford-pet", root=pet_root, split="trainval")
    assert len(ds) == 9
    assert ds.unpaired == [(pet_root / "annotations" / "trimaps" / "beagle_1.png", "missing-mask")]


def test_bad_files_raise_data_errors_naming_the_file(pet_root):
    ds = build_dataset("oxford-pet", root=pet_root, split="trainval")
    img0, msk0 = ds.samples[0]
    img1, msk1 = ds.samples[1]
    img2, msk2 = ds.samples[2]
    img3, msk3 = ds.samples[3]
    img0.write_bytes(b"not a jpeg at all")
    truncate(msk1, 0.6)
    write_gray(msk2, np.full((36, 44), 7, np.uint8))  # 7 is no trimap value
    write_gray(msk3, np.full((10, 10), 1, np.uint8))
    cases = [(0, img0, "unreadable"), (1, msk1, "truncated"), (2, msk2, "bad-values"),
             (3, msk3, "size-mismatch")]  # fmt: skip
    for i, path, kind in cases:
        with pytest.raises(DataError) as e:
            ds.load(i)
        assert str(path) in str(e.value) and e.value.kind == kind and "fix:" in str(e.value)
    with pytest.raises(DataError, match="values outside the classes: 7"):
        ds.load(2)


def test_exclude_drops_listed_files(pet_root):
    ds = build_dataset("oxford-pet", root=pet_root, split="trainval")
    bad = [ds.samples[2][1], ds.samples[5][0]]
    assert ds.exclude(bad) == 2 and len(ds) == 8
    assert all(p not in bad for s in ds.samples for p in s)


def test_preload_serves_the_same_pairs_read_only_without_touching_disk(camvid_root):
    from fcnseg.data.transforms import train_transforms

    tf = train_transforms((16, 16), mean=MEAN, std=STD, scale=(0.5, 1.5))
    ds = build_dataset("camvid", root=camvid_root, split="train", transforms=tf)
    fresh = [ds.load(i) for i in range(len(ds))]
    held = ds.preload()
    assert held == sum(a.nbytes + b.nbytes for a, b in fresh) == 4 * 24 * 32 * 4
    for p in {f for pair in ds.samples for f in pair}:
        p.unlink()  # from now on only the memory copy can answer
    for i, (img, mask) in enumerate(fresh):
        cached_img, cached_mask = ds.load(i)
        assert np.array_equal(cached_img, img) and np.array_equal(cached_mask, mask)
        assert not cached_img.flags.writeable and not cached_mask.flags.writeable
    # the augmentation pipeline works on the read-only arrays and leaves them as they were
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    assert all(np.array_equal(ds.load(i)[0], fresh[i][0]) for i in range(len(ds)))
    # excluding a pair keeps the others' memory copies lined up with their paths
    ds.exclude([ds.samples[0][0]])
    assert len(ds) == 3 and np.array_equal(ds.load(0)[1], fresh[1][1])
    # datasets without files preload too (their pairs are generated once)
    syn = build_dataset("synthetic", split="train", size=32, length=3)
    made = [syn.load(i) for i in range(3)]
    assert syn.preload() == 3 * 32 * 32 * 4
    assert all(np.array_equal(syn.load(i)[0], made[i][0]) and not syn.load(i)[0].flags.writeable for i in range(3))


# ------------------------------------------------------------------ decoding


def _pet_with(tmp_path, writer):
    """A one-image Pet copy whose image is written by `writer(path)`."""
    root = make_pet(tmp_path / "p", n_trainval=1, n_test=1)
    img_path = root / "images" / "beagle_1.jpg"
    writer(img_path)
    return build_dataset("oxford-pet", root=root, split="trainval")


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_image_modes_become_rgb_uint8(tmp_path, mode):
    rgb = random_image(np.random.default_rng(0), 36, 44)

    def writer(path):
        im = Image.fromarray(rgb, "RGB")
        if mode == "I;16":
            arr = rgb[:, :, 0].astype(np.uint16) * 257
            im = Image.fromarray(arr)
            assert im.mode == "I;16"
            im.save(path, format="PNG")
            return
        im = im.convert(mode)
        im.save(path, format="TIFF" if mode in ("CMYK", "LA") else "PNG")

    ds = _pet_with(tmp_path, writer)
    img, mask = ds.load(0)
    assert img.shape == (36, 44, 3) and img.dtype == np.uint8
    if mode == "I;16":  # 16-bit scaled from the full range: 257 * v -> v
        assert np.array_equal(img[:, :, 0], rgb[:, :, 0]) and np.array_equal(
            img[:, :, 1], rgb[:, :, 0]
        )
    if mode == "RGBA":
        assert np.array_equal(img, rgb)


def test_exif_orientation_applied_to_image(tmp_path):
    """A photo stored sideways with EXIF orientation 6 and a mask drawn on the displayed
    (upright) photo: both load upright and aligned."""
    root = make_pet(tmp_path / "p", n_trainval=1, n_test=1, size=(36, 44))
    upright = random_image(np.random.default_rng(3), 36, 44) // 3
    upright[:18] = 255  # a bright top half over a dark bottom, to see the orientation
    stored = np.rot90(upright, k=1)  # rotated 90° CCW; orientation 6 = rotate 90° CW to view
    exif = Image.Exif()
    exif[0x0112] = 6
    write_rgb(root / "images" / "beagle_1.jpg", stored, exif=exif.tobytes(), quality=95)
    tri = np.full((36, 44), 2, np.uint8)
    tri[:18] = 1  # pet on the top half of the upright photo
    write_gray(root / "annotations" / "trimaps" / "beagle_1.png", tri)
    ds = build_dataset("oxford-pet", root=root, split="trainval")
    img, mask = ds.load(0)
    assert img.shape[:2] == mask.shape == (36, 44)
    bright = img.mean(2) > 200
    assert bright[:17].mean() > 0.95 and bright[19:].mean() < 0.05
    assert (mask[bright] == 0).mean() > 0.95


def test_sixteen_bit_and_palette_masks_read_as_values(tmp_path):
    root = make_pet(tmp_path / "p", n_trainval=2, n_test=1)
    tri = np.random.default_rng(0).integers(1, 4, (36, 44))
    Image.fromarray(tri.astype(np.uint16)).save(root / "annotations" / "trimaps" / "beagle_1.png")
    pal = Image.fromarray(tri.astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.save(root / "annotations" / "trimaps" / "Abyssinian_2.png")
    ds = build_dataset("oxford-pet", root=root, split="trainval")
    for i in range(2):
        assert np.array_equal(ds.load(i)[1], tri - 1)


# ------------------------------------------------------------------ voc / sbd


def test_voc_palette_pngs_read_as_indices(voc_root):
    ds = build_dataset("voc", root=voc_root, split="train")
    assert len(ds) == 3 and ds.num_classes == 21 and ds.classes[15] == "person"
    assert build_dataset("voc", root=voc_root / "VOCdevkit" / "VOC2012", split="val").samples
    assert len(build_dataset("voc", root=voc_root, split="trainval")) == 5
    raw = Image.open(ds.samples[0][1])
    assert raw.mode == "P"
    img, mask = ds.load(0)
    assert np.array_equal(mask, np.asarray(raw)) and 255 in mask and mask.max() == 255
    # a mask someone re-saved as RGB maps back through the VOC colours
    rgb_path = ds.samples[1][1]
    Image.open(rgb_path).convert("RGB").save(rgb_path)
    before = np.asarray(Image.open(ds.samples[1][1]))
    assert before.ndim == 3
    assert set(np.unique(ds.load(1)[1])) <= set(range(21)) | {255}


def test_voc_seg11valid_shipped_and_list_file(voc_root, tmp_path):
    from fcnseg.data.voc import SEG11VALID

    names = SEG11VALID.read_text().split()
    assert len(names) == 736 and len(set(names)) == 736 and names == sorted(names)
    assert all(n[:4] in ("2007", "2008", "2009", "2010", "2011") for n in names)
    ds = build_dataset("voc", root=voc_root, split="seg11valid")
    assert [p[0].stem for p in ds.samples] == ["2007_000033"]  # the one present here
    lst = tmp_path / "mine.txt"
    lst.write_text("2007_000039\n2011_000001\n")
    ds = build_dataset("voc", root=voc_root, split="val", list_file=lst)
    assert [p[0].stem for p in ds.samples] == ["2007_000039", "2011_000001"]


def test_sbd_mat_masks_and_train_aug(sbd_root, voc_root):
    import scipy.io

    ds = build_dataset("sbd", root=sbd_root, split="train")
    assert len(ds) == 3 and ds.num_classes == 21
    img, mask = ds.load(0)
    seg = scipy.io.loadmat(ds.samples[0][1])["GTcls"]["Segmentation"][0, 0]
    assert np.array_equal(mask, seg) and img.shape[:2] == mask.shape
    assert len(build_dataset("sbd", root=sbd_root / "benchmark_RELEASE", split="val")) == 2
    with pytest.raises(ConfigError, match="voc_root"):
        build_dataset("sbd", root=sbd_root, split="train_aug")
    aug = build_dataset("sbd", root=sbd_root, split="train_aug", voc_root=voc_root)
    got = {p[0].stem: p[1].suffix for p in aug.samples}
    # VOC train ∪ SBD train+val − VOC val; VOC masks preferred where they exist
    assert got == {"2007_000032": ".png", "2007_000039": ".png", "2008_000001": ".png",
                   "2008_000002": ".mat", "2008_000003": ".mat", "2008_000004": ".mat"}  # fmt: skip
    for i in range(len(aug)):
        assert aug.load(i)[1].dtype == np.uint8


def test_sbd_corrupt_mat_names_file(sbd_root):
    ds = build_dataset("sbd", root=sbd_root, split="train")
    ds.samples[0][1].write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match=ds.samples[0][1].name) as e:
        ds.load(0)
    assert e.value.kind == "unreadable"


# ------------------------------------------------------------------ cityscapes


def test_cityscapes_label_ids_to_train_ids(cityscapes_root):
    from fcnseg.data.cityscapes import LABEL_TO_TRAIN

    ds = build_dataset("cityscapes", root=cityscapes_root, split="train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.palette.shape == (19, 3)
    assert all("_gtFine_labelIds" in m.name for _, m in ds.samples)
    img, mask = ds.load(0)
    raw = np.asarray(Image.open(ds.samples[0][1]))
    expect = np.full_like(raw, 255)
    for lid, tid in LABEL_TO_TRAIN.items():
        expect[raw == lid] = tid
    assert np.array_equal(mask, expect) and (mask == 255).any() and (mask < 19).any()
    assert len(build_dataset("cityscapes", root=cityscapes_root, split="val")) == 2
    with pytest.raises(DataError, match="split 'test' not found"):
        build_dataset("cityscapes", root=cityscapes_root, split="test")


# ------------------------------------------------------------------ folder


def test_folder_colour_masks_and_carve(folder_root):
    from datagen import FOLDER_COLORS

    ds = build_dataset("folder", root=folder_root, split="all")
    assert len(ds) == 10 and ds.classes == ("sky", "grass", "road")
    assert np.array_equal(ds.palette, FOLDER_COLORS)
    img, mask = ds.load(0)
    rgb = np.asarray(Image.open(ds.samples[0][1]))
    assert np.array_equal(FOLDER_COLORS[mask], rgb)
    tr = build_dataset("folder", root=folder_root, split="train", val_fraction=0.3)
    va = build_dataset("folder", root=folder_root, split="val", val_fraction=0.3)
    assert (len(tr), len(va)) == (7, 3)
    assert not {p[0] for p in tr.samples} & {p[0] for p in va.samples}
    assert tr.unpaired == [] and va.unpaired == []


def test_folder_values_unmapped_and_split_folders(tmp_path):
    root = tmp_path / "f"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_rgb(root / "images" / split / f"{split}{i}.png", np.zeros((8, 9, 3), np.uint8))
            lab = np.zeros((8, 9), np.uint8)
            lab[:, 4:] = 255
            lab[0, 0] = 9 if (split, i) == ("val", 1) else 0
            write_gray(root / "masks" / split / f"{split}{i}_mask.png", lab)
    (root / "classes.json").write_text(
        '{"classes": [{"name": "bg", "value": 0}, {"name": "fg", "value": 255}]}'
    )
    tr = build_dataset("folder", root=root, split="train")
    assert len(tr) == 3 and tr.classes == ("bg", "fg")
    assert set(np.unique(tr.load(0)[1])) == {0, 1}  # 255 is a class here, not ignore
    va = build_dataset("folder", root=root, split="val")
    with pytest.raises(DataError, match=r"val1_mask.png: mask values outside the classes: 9"):
        va.load(1)
    va = build_dataset("folder", root=root, split="val", unmapped="ignore")
    assert va.load(1)[1][0, 0] == 255
    assert len(build_dataset("folder", root=root, split="all")) == 5
    with pytest.raises(DataError, match="split 'test' not found"):
        build_dataset("folder", root=root, split="test")


def test_folder_classes_errors(tmp_path, folder_root):
    (folder_root / "classes.yaml").unlink()
    with pytest.raises(ConfigError, match="no classes file"):
        build_dataset("folder", root=folder_root)
    with pytest.raises(ConfigError, match="exactly one of"):
        build_dataset("folder", root=folder_root, classes=[{"name": "a"}])
    with pytest.raises(ConfigError, match="already maps"):
        build_dataset("folder", root=folder_root, classes={"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="not found"):
        build_dataset("folder", root=folder_root, classes=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="needs root"):
        build_dataset("folder")


def test_folder_exif_cmyk_rgba_grayscale_16bit(tmp_path):
    root = tmp_path / "f"
    rng = np.random.default_rng(5)
    upright = (rng.integers(0, 80, (12, 20, 3))).astype(np.uint8)
    upright[:6] = 250
    lab = np.zeros((12, 20), np.uint8)
    lab[:6] = 1
    exif = Image.Exif()
    exif[0x0112] = 6
    write_rgb(root / "images" / "exif.jpg", np.rot90(upright, 1), exif=exif.tobytes(), quality=95)
    Image.fromarray(upright).convert("CMYK").save(root / "images" / "cmyk.jpg", quality=95)
    Image.fromarray(upright).convert("RGBA").save(root / "images" / "rgba.png")
    Image.fromarray(upright[:, :, 0]).save(root / "images" / "gray.png")
    Image.fromarray(upright[:, :, 0].astype(np.uint16) * 257).save(root / "images" / "deep.png")
    for stem in ("exif", "cmyk", "rgba", "gray", "deep"):
        write_gray(root / "masks" / f"{stem}.png", lab)
    Image.fromarray(lab.astype(np.uint16)).save(root / "masks" / "deep.png")  # 16-bit mask
    ds = build_dataset("folder", root=root, split="all", classes=["bg", "top"])
    assert len(ds) == 5
    for i, (img_path, _) in enumerate(ds.samples):
        img, mask = ds.load(i)
        assert img.shape == (12, 20, 3) and img.dtype == np.uint8, img_path.name
        assert np.array_equal(mask, lab), img_path.name
        bright = img.mean(2) > 160
        assert (bright == (lab == 1)).mean() > 0.95, img_path.name


def test_isbi_em_stack_through_folder(shared_data):
    root = shared_data / "isbi-em-membrane"
    if not root.is_dir():
        pytest.skip("isbi-em-membrane absent")
    ds = build_dataset("folder", root=root, split="all", classes={"membrane": 0, "cell": 255})
    assert len(ds) == 30 and ds.classes == ("membrane", "cell")
    img, mask = ds.load(0)
    assert img.shape == (512, 512, 3) and (img[:, :, 0] == img[:, :, 1]).all()
    assert set(np.unique(mask)) == {0, 1}
    assert 0.05 < (mask == 0).mean() < 0.5  # membranes are the thin class


def test_label_map_every_dtype_path():
    from fcnseg.data.base import LabelMap

    dense = LabelMap({1: 0, 2: 1, 3: 255})
    raw = np.array([[1, 2], [3, 1]], np.uint8)
    assert dense(raw).tolist() == [[0, 1], [255, 0]] and dense(raw).dtype == np.uint8
    with pytest.raises(DataError, match="m.png: mask values outside the classes: 0, 9"):
        dense(np.array([[0, 1], [9, 2]], np.uint8), "m.png")
    gapped = LabelMap({0: 0, 255: 1})
    assert gapped(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]
    with pytest.raises(DataError, match="values outside the classes: 128"):
        gapped(np.array([[0, 128]], np.uint8))
    sixteen = LabelMap({0: 0, 1000: 1, 65535: 2})
    assert sixteen(np.array([[1000, 65535, 0]], np.uint16)).tolist() == [[1, 2, 0]]
    with pytest.raises(DataError, match="1001"):
        sixteen(np.array([[1001]], np.uint16))
    signed = LabelMap({-1: 255, 5: 0}, unmapped="ignore")
    assert signed(np.array([[-1, 5, 7]], np.int32)).tolist() == [[255, 0, 255]]
    ignore = LabelMap({1: 0}, unmapped="ignore")
    assert ignore(np.array([[1, 2]], np.uint8)).tolist() == [[0, 255]]
    colors = LabelMap(colors={(1, 2, 3): 0, (0, 0, 0): 255})
    rgb = np.array([[[1, 2, 3], [0, 0, 0]]], np.uint8)
    assert colors(rgb).tolist() == [[0, 255]]
    with pytest.raises(DataError, match=r"\(9,9,9\)"):
        colors(np.full((1, 1, 3), 9, np.uint8))


def test_option_values_checked():
    assert build_dataset("synthetic", size="40x56", length=2).load(0)[0].shape == (40, 56, 3)
    assert build_dataset("synthetic", size=48, length=1).load(0)[1].shape == (48, 48)
    for bad in ({"size": "big"}, {"size": 8}, {"length": "many"}, {"length": 0}, {"seed": 1.5}):
        with pytest.raises(ConfigError):
            build_dataset("synthetic", **bad)


def test_pet_bad_options(pet_root):
    with pytest.raises(ConfigError, match="val_fraction"):
        build_dataset("oxford-pet", root=pet_root, split="val", val_fraction=1.5)
    with pytest.raises(ConfigError, match="val_fraction"):
        build_dataset("oxford-pet", root=pet_root, split="val", val_fraction="lots")
    with pytest.raises(ConfigError, match="border"):
        build_dataset("oxford-pet", root=pet_root, border="thick")
