"""check_dataset: every bad-input case gives a Problem naming the file; reports; exclusion."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import make_camvid, make_folder, truncate, write_gray, write_rgb
from PIL import ImageFile

from fcnseg.data import build_dataset
from fcnseg.data.check import Problem, bad_paths, check_dataset, format_report
from fcnseg.errors import ConfigError


def kinds(problems) -> dict:
    return {(p.path.name, p.kind) for p in problems}


def test_clean_datasets_have_no_problems(
    pet_root, camvid_root, voc_root, sbd_root, cityscapes_root
):
    assert check_dataset("oxford-pet", pet_root) == []
    assert check_dataset("camvid", camvid_root) == []
    assert check_dataset("voc", voc_root) == []
    assert check_dataset("sbd", sbd_root) == []
    assert check_dataset("cityscapes", cityscapes_root) == []
    assert check_dataset("synthetic") == []
    assert format_report([]) == "no problems found"


def test_every_bad_file_is_reported_with_its_name(tmp_path):
    root = make_camvid(tmp_path / "cv", counts={"train": 8, "val": 2}, lists=False)
    tr, an = root / "train", root / "trainannot"
    names = sorted(p.name for p in tr.iterdir())
    (an / names[0]).unlink()  # missing mask
    (tr / names[1]).unlink()  # missing image
    (tr / names[2]).write_bytes(b"this is no image at all")  # corrupt image
    truncate(tr / names[3], 0.5)  # truncated image
    truncate(an / names[4], 0.5)  # truncated mask
    write_gray(an / names[5], np.full((24, 32), 42, np.uint8))  # labels outside the classes
    write_gray(an / names[6], np.zeros((20, 32), np.uint8))  # size mismatch
    write_rgb(tr / "extra_jpeg.jpg", np.zeros((24, 32, 3), np.uint8), quality=90)
    write_gray(an / "extra_jpeg.jpg", np.zeros((24, 32), np.uint8))
    truncate(tr / "extra_jpeg.jpg", 0.6)  # truncated JPEG
    problems = check_dataset("camvid", root)
    assert kinds(problems) == {
        (names[0], "missing-mask"),
        (names[1], "missing-image"),
        (names[2], "unreadable"),
        (names[3], "truncated"),
        (names[4], "truncated"),
        (names[5], "bad-values"),
        (names[6], "size-mismatch"),
        ("extra_jpeg.jpg", "truncated"),
    }
    bad_values = next(p for p in problems if p.kind == "bad-values")
    assert "42" in bad_values.message and bad_values.hint
    report = format_report(problems)
    lines = report.splitlines()
    assert len(lines) == len(problems) + 1
    for p in problems:
        assert any(p.path.name in line and "fix:" in line for line in lines)
    assert lines[-1].startswith("8 problem(s) in 8 file(s)")
    # the engine's path: exclude the listed files, then the rest loads cleanly
    ds = build_dataset("camvid", root=root, split="train")
    ds.exclude(bad_paths(problems))
    assert len(ds) == 1  # 9 frames - 2 unpaired - 6 bad
    for i in range(len(ds)):
        ds.load(i)


def test_truncated_images_caught_even_if_pil_is_lenient(tmp_path):
    root = make_camvid(tmp_path / "cv", counts={"train": 2}, lists=False)
    truncate(root / "train" / sorted((root / "train").iterdir())[0].name, 0.5)
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # some other library switched it on
    try:
        problems = check_dataset("camvid", root, thorough=True)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert [p.kind for p in problems] == ["truncated"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is old


def test_thorough_and_fast_modes_agree(tmp_path):
    root = make_camvid(tmp_path / "cv", counts={"train": 6}, lists=False)
    files = sorted((root / "train").iterdir())
    truncate(files[0], 0.7)
    files[1].write_bytes(files[1].read_bytes()[:-40] + b"\0" * 40)  # damaged IDAT / CRC
    fast = kinds(check_dataset("camvid", root))
    assert fast == kinds(check_dataset("camvid", root, thorough=True))
    assert {n for n, _ in fast} == {files[0].name, files[1].name}


def test_missing_and_empty_root(tmp_path):
    problems = check_dataset("oxford-pet", tmp_path / "absent")
    assert len(problems) == 1 and problems[0].kind == "missing-root" and problems[0].fatal
    assert "absent" in str(problems[0]) and "fcnseg data download oxford-pet" in problems[0].hint
    (tmp_path / "empty").mkdir()
    problems = check_dataset("camvid", tmp_path / "empty")
    assert [p.kind for p in problems] == ["empty-root"]
    assert bad_paths(problems) == set()
    with pytest.raises(ConfigError):
        check_dataset("no-such-dataset", tmp_path)


def test_absent_splits_are_skipped_unless_asked(tmp_path):
    root = make_camvid(tmp_path / "cv", counts={"train": 2, "val": 1}, lists=False)
    assert check_dataset("camvid", root) == []  # no test/ folder: fine
    problems = check_dataset("camvid", root, splits=["test"])
    assert [p.kind for p in problems] == ["missing-split"] and "test" in problems[0].message


def test_pet_split_listing_only_missing_files(pet_root):
    for p in (pet_root / "images").glob("*.jpg"):
        p.unlink()
    problems = check_dataset("oxford-pet", pet_root)
    assert {p.kind for p in problems} == {"empty-split", "missing-image"}
    assert sum(p.kind == "missing-image" for p in problems) == 13


def test_folder_problems_and_orphans(tmp_path):
    root = make_folder(tmp_path / "f", n=6)
    write_rgb(root / "masks" / "img000.png", np.full((20, 28, 3), 7, np.uint8))  # unknown colour
    write_rgb(root / "masks" / "lonely.png", np.zeros((20, 28, 3), np.uint8))  # no image
    problems = check_dataset("folder", root)
    assert kinds(problems) == {("img000.png", "bad-values"), ("lonely.png", "missing-image")}
    assert "(7,7,7)" in next(p for p in problems if p.kind == "bad-values").message
    assert check_dataset("folder", root, unmapped="ignore") == [
        p for p in problems if p.kind == "missing-image"
    ]


def test_problem_str_and_fatal():
    p = Problem(
        path=__import__("pathlib").Path("/x/a.png"), kind="bad-values", message="m", hint="h"
    )
    assert str(p) == "[bad-values] m -- fix: h" and not p.fatal


def test_camvid_real_copy_has_no_problems(shared_data):
    root = shared_data / "camvid"
    if not root.is_dir():
        pytest.skip("camvid absent")
    assert check_dataset("camvid", root) == []
