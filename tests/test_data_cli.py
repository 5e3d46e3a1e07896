"""Dataset statistics (median-frequency weights by hand), mask drawing, and the
`fcnseg data check|download|stats|show` commands run through `fcnseg.cli.main`."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main
from fcnseg.cli.data import add_data_args, dataset_options
from fcnseg.data import download
from fcnseg.data.show import IGNORE_COLOR, colorize, overlay, show_dataset
from fcnseg.data.stats import dataset_stats, median_frequency_weights
from fcnseg.errors import ConfigError, DataError


class FakeDataset:
    """The dataset contract, in memory: masks given, images grey."""

    classes = ("a", "b", "c", "d")
    palette = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    ignore_index = 255
    num_classes = 4

    def __init__(self, masks):
        self.masks = [np.asarray(m, np.uint8) for m in masks]

    def __len__(self):
        return len(self.masks)

    def load(self, i):
        m = self.masks[i]
        return np.full((*m.shape, 3), 100, np.uint8), m


# A: c0 x6, c1 x1, ignore x1; B: c1 x4, c2 x4; C: all ignore (3x5); class d never appears
MASK_A = [[0, 0, 0, 0], [0, 0, 1, 255]]
MASK_B = [[1, 1, 1, 1], [2, 2, 2, 2]]
MASK_C = np.full((3, 5), 255)


def test_stats_hand_computed():
    s = dataset_stats(FakeDataset([MASK_A, MASK_B, MASK_C]))
    assert s["num_images"] == 3
    assert s["pixel_counts"] == [6, 5, 4, 0]
    assert s["ignored_pixels"] == 1 + 15
    assert s["labelled_pixels"] == 15
    assert s["frequencies"] == pytest.approx([6 / 15, 5 / 15, 4 / 15, 0.0])
    assert s["image_counts"] == [1, 2, 1, 0]
    assert s["image_sizes"] == {
        "min": [2, 4], "max": [3, 5], "most_common": [2, 4], "count": 2, "distinct": 2,
    }  # fmt: skip
    # freq(c) = pixels of c / labelled pixels of images containing c:
    # c0: 6/7 (A), c1: 5/15 (A+B), c2: 4/8 (B); median 0.5; d unseen -> 1.0
    expected = [0.5 / (6 / 7), 0.5 / (5 / 15), 1.0, 1.0]
    assert s["median_frequency_weights"] == pytest.approx(expected)
    assert median_frequency_weights(FakeDataset([MASK_A, MASK_B])) == pytest.approx(expected)
    json.dumps(s)  # JSON-ready


def test_stats_max_images_spreads_and_bad_values():
    s = dataset_stats(FakeDataset([MASK_A, MASK_B, MASK_C]), max_images=2)
    assert s["num_images"] == 2 and s["pixel_counts"] == [6, 1, 0, 0]  # A and C
    with pytest.raises(DataError, match="mask value 7 is not a class"):
        dataset_stats(FakeDataset([MASK_A, [[7, 0]]]))
    with pytest.raises(DataError, match="empty"):
        dataset_stats(FakeDataset([]))


def test_colorize_and_overlay_numbers():
    mask = np.array([[0, 1], [3, 255]])
    pal = FakeDataset.palette
    rgb = colorize(mask, pal)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb.tolist() == [[[0, 0, 0], [200, 0, 0]], [[0, 0, 200], list(IGNORE_COLOR)]]
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(image, mask, pal, 0.5)
    assert out.dtype == np.uint8
    assert out[0, 1].tolist() == [150, 50, 50]
    assert out[1, 1].tolist() == [162, 162, 146]  # (100 + 224) / 2, (100 + 192) / 2
    assert (overlay(image, mask, pal, 0.0) == image).all()
    assert (overlay(image, mask, pal, 1.0) == rgb).all()
    assert overlay(image[:, :, 0], mask, pal, 0.5).shape == (2, 2, 3)  # grey input
    with pytest.raises(DataError, match="mask value 9"):
        colorize(np.array([[9]]), pal)
    with pytest.raises(DataError, match="2x2 but the mask is 1x2"):
        overlay(image, mask[:1], pal)


def test_show_dataset_png(tmp_path):
    ds = FakeDataset([MASK_A, MASK_B, MASK_C, MASK_B, MASK_A])
    out = show_dataset(ds, tmp_path / "sub" / "grid.png", n=3, cols=2, dpi=50, tile_inches=2)
    with Image.open(out) as im:
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert w == 2 * 2 * 50  # cols * tile_inches * dpi
    # rows: 2 inches wide x median aspect 0.5 + a 0.25-inch title, plus a legend band
    assert 2 * (1.0 + 0.25) * 50 < h < 2 * (1.0 + 0.25) * 50 + 60
    assert (px.reshape(-1, 3) == [162, 162, 146]).all(axis=1).any()  # ignore drawn
    with pytest.raises(DataError, match="empty"):
        show_dataset(FakeDataset([]), tmp_path / "x.png")


def test_dataset_options_parsing():
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    args = parser.parse_args(
        ["--data", "x", "--data-option", "border=ignore", "--data-option", "val-fraction=0.2",
         "--data-option", "flag=true", "--data-option", "seed=3", "--data-option", "seed=4",
         "--data-option", "ids=[1, 2]"]
    )  # fmt: skip
    assert dataset_options(args) == {
        "border": "ignore", "val_fraction": 0.2, "flag": True, "seed": 4, "ids": [1, 2],
    }  # fmt: skip
    args = parser.parse_args(["--data", "x", "--data-option", "classes={membrane: 0, cell: 255}"])
    assert dataset_options(args) == {"classes": {"membrane": 0, "cell": 255}}
    args = parser.parse_args(["--data", "x", "--data-option", "novalue"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        dataset_options(args)
    args = parser.parse_args(["--data", "x", "--data-option", "ids=[1, 2"])
    with pytest.raises(ConfigError, match="cannot read the value"):
        dataset_options(args)


# ------------------------------------------------------------------ CLI, on real layouts


@pytest.fixture
def camvid_root(tmp_path):
    """A tiny CamVid: 3 train frames 6x8 with labels 0..11 (11 = void), one broken val mask."""
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("val", 1)):
        (root / part).mkdir(parents=True)
        (root / f"{part}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
                root / part / f"f{i}.png"
            )
            label = np.zeros((6, 8), np.uint8)
            label[:, 4:] = 3  # Road on the right half
            label[0, :] = 11  # void top row
            label[5, 0] = i  # one pixel of class i
            Image.fromarray(label).save(root / f"{part}annot" / f"f{i}.png")
    return root


def test_cli_stats_json_and_table(camvid_root, capsys):
    rc = main(["data", "stats", "--data", "camvid", "--data-root", str(camvid_root), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_images"] == 3 and s["ignored_pixels"] == 3 * 8
    counts = s["pixel_counts"]
    # per frame: 20 Road, 20 - 1 class 0 on the left, plus one pixel of class i at [5, 0]
    assert counts[3] == 60 and counts[0] == 3 * 19 + 1 and counts[1] == 1 and counts[2] == 1
    assert sum(counts) == 3 * 40 and len(counts) == 11
    assert s["image_sizes"]["most_common"] == [6, 8]
    rc = main(["data", "stats", "--data", "camvid", "--data-root", str(camvid_root)])
    out = capsys.readouterr().out
    assert rc == 0 and "Road" in out and "50.00" in out and "weight" in out


def test_cli_show_writes_png(camvid_root, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["data", "show", "--data", "camvid", "--data-root", str(camvid_root),
               "--n", "2", "--cols", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0 and "wrote" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] == 2 * 300  # two 3-inch tiles at 100 dpi
        assert im.size[1] > 300


def test_cli_check_exit_codes(camvid_root, capsys):
    args = ["data", "check", "--data", "camvid", "--data-root", str(camvid_root)]
    assert main(args + ["--split", "train"]) == 0
    capsys.readouterr()
    (camvid_root / "valannot" / "f0.png").write_bytes(b"\x89PNG broken")
    assert main(args + ["--split", "train", "val"]) == 1
    out = capsys.readouterr().out
    assert "valannot/f0.png" in out and "1 problem(s)" in out
    (camvid_root / "train" / "f1.png").unlink()
    assert main(args + ["--limit", "1", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "... and 1 more" in out and "2 problem(s)" in out


def test_cli_user_errors_exit_2(tmp_path, capsys):
    rc = main(["data", "stats", "--data", "camvid", "--data-root", str(tmp_path / "nope")])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["data", "stats", "--data", "no-such-dataset"])
    assert rc == 2 and "no-such-dataset" in capsys.readouterr().err


def test_cli_download_then_noop(tmp_path, monkeypatch, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("images/x.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    src = tmp_path / "pets.tar.gz"
    src.write_bytes(buf.getvalue())
    res = {"url": src.as_uri(), "filename": "pets.tar.gz",
           "md5": hashlib.md5(buf.getvalue()).hexdigest(), "extract": True}  # fmt: skip
    monkeypatch.setitem(download.RESOURCES, "oxford-pet", {"data_root": ".", "files": [res]})
    root = tmp_path / "pet"
    args = ["data", "download", "oxford-pet", "--root", str(root), "--no-progress"]
    assert main(args) == 0
    assert (root / "images" / "x.txt").read_bytes() == b"hi"
    assert f"--data-root {root.resolve()}" in capsys.readouterr().out
    src_bytes = src.read_bytes()
    src.unlink()  # a second run must not need the source
    assert main(args) == 0
    src.write_bytes(src_bytes)
    monkeypatch.setenv("FCNSEG_DATA", str(tmp_path / "cache"))
    assert main(["data", "download", "oxford-pet", "--no-progress"]) == 0  # default root
    assert (tmp_path / "cache" / "oxford-pet" / "images" / "x.txt").is_file()
    assert main(["data", "download", "camvid", "--root", str(root)]) == 2
    assert "oxford-pet, sbd, voc" in capsys.readouterr().err


def test_cli_stats_synthetic_with_options(capsys):
    base = ["data", "stats", "--data", "synthetic", "--split", "val", "--json"]
    opts = ["--data-option", "length=3", "--data-option", "size=[32, 48]"]
    assert main(base + opts) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_images"] == 3 and s["image_sizes"]["most_common"] == [32, 48]
    assert s["classes"] == ["pet", "background", "border"]
    assert sum(s["pixel_counts"]) == 3 * 32 * 48 and s["ignored_pixels"] == 0
    assert main(base + opts + ["--data-option", "border=ignore"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_classes"] == 2 and s["ignored_pixels"] > 0
    assert sum(s["pixel_counts"]) + s["ignored_pixels"] == 3 * 32 * 48
    assert main(base + ["--data-option", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_on_real_folders(shared_data, capsys):
    """ISBI through the generic folder layout (255 is a real class there), Pet trimaps."""
    isbi = ["--data", "folder", "--data-root", str(shared_data / "isbi-em-membrane"),
            "--data-option", "classes={membrane: 0, cell: 255}"]  # fmt: skip
    assert main(["data", "stats", *isbi, "--split", "all", "--max-images", "4", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_images"] == 4 and s["ignored_pixels"] == 0
    assert s["image_sizes"]["most_common"] == [512, 512]
    assert sum(s["pixel_counts"]) == 4 * 512 * 512
    assert s["median_frequency_weights"][0] > 1 > s["median_frequency_weights"][1]
    pet = ["--data", "oxford-pet", "--data-root", str(shared_data / "oxford-pet-mini")]
    assert main(["data", "check", *pet]) == 0
    assert "no problems found" in capsys.readouterr().out
