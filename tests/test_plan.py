"""The planner: its rules on synthetic fingerprints (pure, no training), the fingerprint of a
small folder dataset and its cache, the probe's cache, `fcnseg plan` and the plan file through
`fcnseg train --config`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datagen import write_gray

from fcnseg.cli import main
from fcnseg.config import resolve_config
from fcnseg.plan import planner
from fcnseg.plan.planner import MIN_STEPS, apply_given, plan_config

# ------------------------------------------------------------------ synthetic inputs

FAST = {"overhead_s": 0.02, "pixel_s": 0.5e-6, "machine": {"precision": "bf16"}}
SLOW = {"overhead_s": 0.05, "pixel_s": 4e-6, "machine": {"precision": "fp32"}}


def cls(name, freq, weight, *, edge=0.05, objects=0.2):
    return {"name": name, "frequency": freq, "presence": 1.0, "median_frequency_weight": weight, "components_per_image": 3.0,
            "median_component_area": objects, "p10_component_area": objects / 4, "pixel_median_component_area": objects, "edge_share": edge}


STREET_LAYOUT = {"upside_down": 0.55, "mirrored": 0.05, "turned": 0.45, "bands": 8}


def fp_of(classes, *, n=300, size=(360, 480), val=None, data="folder", layout=STREET_LAYOUT):
    return {
        "data": data, "root": "/data/x", "options": {}, "split": "train", "num_images": n, "num_classes": len(classes),
        "classes": [c["name"] for c in classes], "per_class": classes, "unmapped_values": {},
        "image_sizes": {"median": list(size), "min_side": min(size), "distinct": 1},
        "channels": {"mean": [0.5] * 3, "std": [0.2] * 3, "grayscale": False},
        "val": val or {"split": "val", "images": 100, "carved": False, "exists": True}, "layout": layout,
    }


CARVED = {"split": "val", "images": 4, "carved": True, "exists": True}  # no val split of its own
STREET = [cls("road", 0.55, 0.4, edge=0.02, objects=0.3), cls("building", 0.35, 0.7, objects=0.2),
          cls("pole", 0.02, 9.0, edge=0.6, objects=0.003), cls("car", 0.08, 2.5, objects=0.05)]


# ------------------------------------------------------------------ planner rules


def test_rare_thin_class_gets_copy_paste_weights_and_resolution():
    plan = plan_config(fp_of(STREET), FAST, 30)
    cfg = plan.config
    assert cfg["paste_classes"] == ["pole"] and cfg["copy_paste"] == 0.5  # car: rare but large objects
    assert cfg["class_weights"] == "median_sqrt" and cfg["hard_pixels"] == 0.25  # thousands of steps: mined
    short = plan_config(fp_of(STREET), SLOW, 3).config  # a few hundred steps: every pixel
    assert short["hard_pixels"] == 1.0 and short["class_weights"] == "median_sqrt"
    assert min(cfg["scale"]) / 0.75 >= 0.75  # the main stage keeps >= 3/4 of the thin class's width
    assert "pole" in plan.reasons["copy_paste"] and "pole" in plan.reasons["scale"]
    assert set(plan.reasons) >= {"model", "crop", "batch_size", "lr", "class_weights", "progressive", "eval_every"}


def test_slower_machine_gets_fewer_pixels_per_step():
    fast, slow = plan_config(fp_of(STREET), FAST, 10), plan_config(fp_of(STREET), SLOW, 10)
    px = lambda p: p.config["batch_size"] * p.config["crop"][0] * p.config["crop"][1] * p.config["scale"][0]  # noqa: E731
    assert px(slow) < px(fast)
    assert slow.estimate["steps"] >= MIN_STEPS and fast.estimate["steps"] >= MIN_STEPS
    # the fast machine at 30 minutes: the recipe's full-resolution CamVid crops
    assert plan_config(fp_of(STREET), FAST, 30).config["crop"] == [288, 384]


def test_a_slower_step_buys_final_steps_with_batch_4_and_smaller_crops_first():
    # probes as measured on an AMD EPYC [AVX2 only: no AVX-512, no native bf16] (fp32, 57 ms + 3.5 us a pixel) and a ~4x faster bf16 one
    avx2 = {"overhead_s": 0.057, "pixel_s": 3.52e-6, "machine": {"precision": "fp32"}}
    bf16 = {**avx2, "pixel_s": 0.8e-6, "machine": {"precision": "bf16"}}
    fast, slow = plan_config(fp_of(STREET), bf16, 30), plan_config(fp_of(STREET), avx2, 30)
    assert fast.config["crop"] == [288, 384] and fast.config["batch_size"] == 8  # the recipe's view
    # the slow step: batch 4, then crops of 65 % of the side, until the final stage gets FINAL_STEPS
    assert slow.config["batch_size"] == 4 and slow.config["crop"] == [224, 320]
    assert slow.config["scale"] == fast.config["scale"]  # the scale is kept (the thin pole)
    final = planner.steps_in(slow.estimate["train_seconds"], avx2, 4, (224, 320), slow.config["progressive"])[1]
    assert final >= planner.FINAL_STEPS and "final stage" in slow.reasons["crop"]
    # what the recipe's view would have given there: under half of that
    assert planner.steps_in(slow.estimate["train_seconds"], avx2, 8, (288, 384), fast.config["progressive"])[1] < final / 2
    # too short a budget for FINAL_STEPS: the most final steps of those views, said so
    short = plan_config(fp_of(STREET), avx2, 10)
    assert short.config["crop"] == [224, 320] and short.config["batch_size"] == 4
    assert "fewer than the 500 wanted" in short.reasons["crop"]


def test_the_class_layout_decides_the_flips_and_quarter_turns():
    two = [cls("membrane", 0.2, 2.0, edge=0.4, objects=0.2), cls("cell", 0.8, 0.6)]
    street = plan_config(fp_of(STREET), FAST, 10)
    assert street.config["hflip"] is True and street.config["rotate90"] is False
    assert "has an up" in street.reasons["rotate90"]
    em = dict(n=26, size=(512, 512), val={"split": "val", "images": 4, "carved": True, "exists": True})
    free = plan_config(fp_of(two, **em, layout={"upside_down": 0.02, "mirrored": 0.02, "turned": 0.03, "bands": 8}), FAST, 10)
    assert free.config["rotate90"] is True and free.config["hflip"] is True and "no up" in free.reasons["rotate90"]
    sided = plan_config(fp_of(two, layout={"upside_down": 0.4, "mirrored": 0.5, "turned": 0.4, "bands": 8}), FAST, 10)
    assert sided.config["hflip"] is False and sided.config["rotate90"] is False and "one side" in sided.reasons["hflip"]
    # a fingerprint from before the layout was measured: the old rules
    old = plan_config(fp_of(two, layout=None), FAST, 10)
    assert old.config["hflip"] is True and old.config["rotate90"] is False
    # the turned views of the test-time choice are held back from the training time
    assert free.estimate["train_seconds"] < plan_config(fp_of(two, **em), FAST, 10).estimate["train_seconds"]


def test_very_slow_machine_lowers_the_scale():
    crawl = {**SLOW, "pixel_s": 40e-6}
    balanced = [cls("a", 0.5, 1.0), cls("b", 0.5, 1.0)]
    plan = plan_config(fp_of(balanced), crawl, 5)
    assert plan.config["scale"][0] < 0.75  # below the native scale (0.75 * 1.0)
    assert plan.config["crop"][0] >= planner.MIN_CROP


def test_no_val_split_gets_a_carve_of_at_least_four_images():
    fp = fp_of(STREET, n=27, size=(512, 512), val={"split": "val", "images": 3, "carved": True, "exists": True})
    plan = plan_config(fp, FAST, 3)
    assert plan.config["data_options"]["val_fraction"] == pytest.approx(4 / 30, abs=1e-3)
    assert "carve" in plan.reasons["data_options"]
    assert plan.estimate["train_images"] == 26
    assert "4 images" in plan.reasons["data_options"]
    # ten files: at most a quarter is held out, and the reason gives the count the carve takes
    from fcnseg.data.base import seeded_carve

    fp = fp_of(STREET, n=9, size=(256, 256), val={"split": "val", "images": 1, "carved": True, "exists": True})
    plan = plan_config(fp, FAST, 3)
    frac = plan.config["data_options"]["val_fraction"]
    held = len(seeded_carve(range(10), frac, 0)[1])
    assert frac == 0.25 and held == 2 and plan.estimate["train_images"] == 8
    assert "2 images (at most a quarter of the files; 4 wanted)" in plan.reasons["data_options"]
    for total in range(0, 40):
        for f in (0.0, 0.1, 0.133, 0.25):
            assert planner.carve_count(total, f) == len(seeded_carve(range(total), f, 0)[1])


def test_two_balanced_classes_get_no_balancing():
    plan = plan_config(fp_of([cls("fg", 0.45, 1.1), cls("bg", 0.55, 0.9)]), FAST, 10)
    assert plan.config["copy_paste"] == 0.0 and plan.config["paste_classes"] is None
    assert plan.config["class_weights"] == "none"
    assert plan.config["hard_pixels"] == 1.0  # two classes: no mining
    # two unbalanced classes with a thin one (ISBI EM): weights, full resolution kept
    em = plan_config(fp_of([cls("membrane", 0.22, 2.3, edge=0.37), cls("cell", 0.78, 0.64)], n=27, size=(512, 512)), FAST, 10)
    assert em.config["class_weights"] == "median_sqrt" and em.config["hard_pixels"] == 1.0 and em.config["copy_paste"] == 0.0
    assert em.config["scale"][0] / 0.75 >= 0.75


def test_tiny_dataset_small_batch():
    plan = plan_config(fp_of(STREET, n=6, val={"split": "val", "images": 0, "carved": False, "exists": False}), FAST, 3)
    assert plan.config["batch_size"] <= 3 and plan.config["val_split"] == "train"


def test_the_epoch_cap_never_ends_a_long_budget_on_a_small_dataset():
    """26 images, 30 minutes, a fast machine: the time budget must end the run, not the epochs
    (a 1000-epoch cap once stopped such a run 20 minutes into its 30)."""
    for n, minutes in ((26, 30), (26, 120), (300, 3), (8, 60)):
        plan = plan_config(fp_of(STREET, n=n), FAST, minutes)
        steps_per_epoch = max(1, n // plan.config["batch_size"])  # fewer still with a val carve
        assert plan.config["epochs"] * steps_per_epoch >= 5 * plan.estimate["steps"], (n, minutes)
        assert plan.config["epochs"] >= 1000


def test_large_odd_images_are_scaled_and_evaluated_at_that_scale():
    plan = plan_config(fp_of(STREET[:2], size=(1999, 3001)), FAST, 30)
    s = plan.config["scale"][0] / 0.75
    assert s < 0.25 and plan.config["eval_tta"] == plan.config["eval_crf"] == "auto"
    from fcnseg.inference.specs import run_tta

    # until the end-of-run choice, validation (and a checkpoint saved before it) runs at the training scale
    assert float(run_tta("auto", plan.config["scale"]).split("=")[1]) == pytest.approx(s, rel=1e-3)
    assert all(c % 32 == 0 for c in plan.config["crop"]) and plan.config["crop"][1] <= 3001 * s + 32


def test_long_thin_images_keep_their_short_side():
    """A panorama's long side does not scale its short side under MIN_SHORT_SIDE."""
    pano = plan_config(fp_of(STREET[:2], size=(96, 1800)), FAST, 10)
    assert sum(pano.config["scale"]) / 2 == pytest.approx(1.0)
    wide = plan_config(fp_of(STREET[:2], size=(1000, 5000)), FAST, 10)
    assert sum(wide.config["scale"]) / 2 * 1000 >= planner.MIN_SHORT_SIDE * 0.75 - 1  # at most the 3/4 step below it
    assert sum(wide.config["scale"]) / 2 < 0.3  # still scaled down


def test_large_images_with_thin_lines_keep_the_lines_three_pixels_wide(monkeypatch):
    vessels = [cls("background", 0.9, 0.55), cls("vessel", 0.1, 5.0, edge=0.5, objects=0.1)]  # lines ~4 px wide
    big = plan_config(fp_of(vessels, n=40, size=(2336, 3504)), FAST, 30)
    mid = sum(big.config["scale"]) / 2
    assert planner.thin_min_scale(fp_of(vessels), [1]) == pytest.approx(0.75)
    assert mid >= 0.75 * 0.75 - 1e-6 and mid > 1024 / 3504  # not the 0.29 the side limit would give
    assert "no lower than 0.75" in big.reasons["scale"] and "vessel" in big.reasons["scale"]
    # where the machine needs the 3/4 step below that, the reason says so instead of "no lower"
    short = plan_config(fp_of(vessels, n=4, size=(2160, 3840)), SLOW, 1)
    assert sum(short.config["scale"]) / 2 == pytest.approx(0.75 * 0.75, abs=0.01)
    assert "no lower" not in short.reasons["scale"] and "go to 3/4 of that (lines ~2.2 px)" in short.reasons["scale"]
    # and a budget that buys fewer steps than wanted says so, not ">= 125"
    assert "fewer than the 125 wanted: the fastest step at this scale" in short.reasons["crop"], short.reasons["crop"]
    # 1-2 px lines: never scaled down at all (the 3/4 step only where the machine needs it)
    hair = [cls("background", 0.95, 0.5), cls("hair", 0.05, 9.0, edge=1.0, objects=0.05)]
    assert planner.thin_min_scale(fp_of(hair), [1]) == 1.0
    assert sum(plan_config(fp_of(hair, n=40, size=(2336, 3504)), FAST, 30).config["scale"]) / 2 >= 0.75
    # images that fit MAX_SIDE_THIN are planned as without the rule; thick classes are scaled to MAX_SIDE
    with_rule = plan_config(fp_of(vessels, size=(512, 512)), SLOW, 5).config
    monkeypatch.setattr(planner, "THIN_MIN_PX", 0.0)
    assert plan_config(fp_of(vessels, size=(512, 512)), SLOW, 5).config == with_rule
    assert sum(plan_config(fp_of(vessels, n=40, size=(2336, 3504)), FAST, 30).config["scale"]) / 2 < 0.3  # what the rule prevents
    assert sum(plan_config(fp_of(STREET[:2], n=40, size=(2336, 3504)), FAST, 30).config["scale"]) / 2 < 0.2


def test_thin_lines_that_make_half_the_classes_are_scaled_up_toward_six_pixels(monkeypatch):
    """Lines of ~3 px in a two-class map are drawn too thick by a stride-4 output: the images are
    scaled up 2x (6 / 3, at most MAX_UP), validated and chosen at that scale; ISBI EM's ~5 px
    membrane (x1.11, under MIN_UP), a thin class among many (CamVid's poles) and images the
    upscale would take past MAX_SIDE_THIN are not."""
    from fcnseg.inference.specs import run_tta

    vessels = [cls("background", 0.95, 0.5), cls("vessel", 0.05, 9.0, edge=0.67, objects=0.03)]  # ~3 px lines
    assert planner.thin_up_scale(fp_of(vessels, size=(384, 384)), [1]) == 2.0
    plan = plan_config(fp_of(vessels, n=36, size=(384, 384), val=CARVED), SLOW, 5)
    mid = sum(plan.config["scale"]) / 2
    assert mid == pytest.approx(2.0) and float(run_tta("auto", plan.config["scale"]).split("=")[1]) == pytest.approx(2.0)
    assert [sum(st["scale"]) / 2 for st in plan.config["progressive"]] in ([], [pytest.approx(1.0)])  # half of the 2x
    assert "scaled up 2x" in plan.reasons["scale"] and "vessel" in plan.reasons["scale"] and "768x768 scaled" in plan.reasons["crop"]
    assert plan.estimate["steps"] >= MIN_STEPS
    # without the rule: scale 1; the validations are costed at the scaled size (4x the pixels)
    monkeypatch.setattr(planner, "THIN_UP_PX", 0.0)
    plain = plan_config(fp_of(vessels, n=36, size=(384, 384), val=CARVED), SLOW, 5)
    assert sum(plain.config["scale"]) / 2 == pytest.approx(1.0) and "scaled up" not in plain.reasons["scale"]
    eval_s = lambda p: float(re.search(r"validation\(s\) of ~(\d+)s", p.reasons["eval_every"]).group(1))  # noqa: E731
    assert eval_s(plan) > 1.5 * eval_s(plain)
    monkeypatch.undo()
    # 4 px lines (edge share 0.5): x1.5; in 800-px images no further than MAX_SIDE_THIN allows (1.28)
    four = [cls("background", 0.9, 0.55), cls("vessel", 0.1, 5.0, edge=0.5, objects=0.1)]
    assert planner.thin_up_scale(fp_of(four, size=(512, 512)), [1]) == 1.5
    assert planner.thin_up_scale(fp_of(four, size=(600, 800)), [1]) == 1.28
    assert planner.thin_up_scale(fp_of(four, size=(768, 1024)), [1]) == 1.0  # 1.0 < MIN_UP: as it is
    assert planner.thin_up_scale(fp_of(vessels, size=(2336, 3504)), [1]) == 1.0  # large: the down-scaling rules
    mixed = fp_of(vessels, size=(384, 384))
    mixed["image_sizes"]["max"] = [900, 700]  # one 700x900 image among 384x384 ones: 1024 / 900
    assert planner.thin_up_scale(mixed, [1]) == 1.0
    # ISBI EM (membrane edge share 0.37: ~5.4 px): x1.11 would not pay its cost
    em = [cls("membrane", 0.22, 2.29, edge=0.37, objects=0.2), cls("cell", 0.78, 0.64, edge=0.10, objects=0.02)]
    assert planner.thin_up_scale(fp_of(em, size=(512, 512)), [0]) == 1.0
    assert sum(plan_config(fp_of(em, n=26, size=(512, 512), val=CARVED), SLOW, 10).config["scale"]) / 2 == pytest.approx(1.0)
    # one thin class of four (poles in a street scene): the other classes need the context
    assert planner.thin_up_scale(fp_of(STREET), planner.thin_classes(fp_of(STREET))) == 1.0
    assert sum(plan_config(fp_of(STREET), SLOW, 10).config["scale"]) / 2 <= 1.0


def test_large_images_with_small_objects_keep_them_eight_pixels_across():
    cells = [cls("background", 0.97, 0.5), {**cls("cell", 0.03, 6.0, objects=0.0001), "pixel_median_short_side": 16.0}]
    assert planner.small_min_scale(fp_of(cells), [1]) == pytest.approx(0.5)
    big = plan_config(fp_of(cells, n=60, size=(3000, 4000)), FAST, 30)
    assert sum(big.config["scale"]) / 2 >= 0.5 * 0.5 - 1e-6 and sum(big.config["scale"]) / 2 > 640 / 4000
    assert "small objects (cell)" in big.reasons["scale"] and "no lower than 0.5" in big.reasons["scale"]
    old = [cells[0], cls("cell", 0.03, 6.0, objects=0.0001)]  # a fingerprint without object sizes: scaled to 640 px
    assert sum(plan_config(fp_of(old, n=60, size=(3000, 4000)), FAST, 30).config["scale"]) / 2 <= 640 / 4000 + 1e-3


def test_given_options_win_and_the_yaml_round_trips(tmp_path):
    plan = apply_given(plan_config(fp_of(STREET), FAST, 10), {"lr": 0.01, "data_options": {"seed": 3}})
    assert plan.config["lr"] == 0.01 and plan.reasons["lr"] == "given"
    path = tmp_path / "plan.yaml"
    path.write_text(plan.yaml())
    loaded = yaml.safe_load(path.read_text())
    assert loaded == plan.config
    cfg = resolve_config(config_file=path)
    assert cfg.model == "fcn4s" and cfg.progressive == plan.config["progressive"]


# ------------------------------------------------------------------ fingerprint


def make_lines(root: Path, n: int = 8, size=(64, 80)) -> Path:
    """ISBI-like: grayscale images, 0/255 masks where 0 is a 1-2 px line class; one mask has a stray 7."""
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n):
        mask = np.full((h, w), 255, np.uint8)
        mask[:, 10 + i : 12 + i] = 0
        mask[30, :] = 0
        if i == 3:
            mask[0, 0] = 7
        img = np.where(mask == 0, 40, 200).astype(np.uint8) + rng.integers(0, 20, (h, w), dtype=np.uint8)
        write_gray(root / "images" / f"{i}.png", img)
        write_gray(root / "masks" / f"{i}.png", mask)
    return root


LINES_OPTS = {"classes": {"line": 0, "cell": 255}}


def test_fingerprint_of_a_folder_and_its_cache(tmp_path, monkeypatch):
    from fcnseg.plan.fingerprint import fingerprint, format_fingerprint

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    root = make_lines(tmp_path / "lines")
    fp = fingerprint("folder", root, LINES_OPTS)
    assert fp["cache"]["hit"] is False and Path(fp["cache"]["path"]).parent == root / ".fcnseg"
    assert fp["num_classes"] == 2 and fp["channels"]["grayscale"]
    assert fp["unmapped_values"] == {"7": 1} and "7 (1 px)" in format_fingerprint(fp)
    line, cell = fp["per_class"]
    assert line["edge_share"] > 0.9 and cell["edge_share"] < 0.2  # the line class is thin
    assert line["pixel_median_short_side"] == 64  # the crossing lines are one object spanning the 64-px side
    assert 5 <= cell["pixel_median_short_side"] < 64  # the cells between them
    assert line["frequency"] == pytest.approx(1 - cell["frequency"])
    assert 0 < line["frequency"] < 0.2 and line["presence"] == 1.0
    assert fp["val"]["carved"] and fp["val"]["images"] >= 1
    lay = fp["layout"]  # vertical lines at every column offset and one row: less layout than a street
    assert 0 <= lay["upside_down"] < 0.5 and 0 <= lay["turned"] <= 1 and lay["bands"] == 8
    assert "layout" in format_fingerprint(fp)
    again = fingerprint("folder", root, LINES_OPTS)
    assert again["cache"]["hit"] is True and again["per_class"] == fp["per_class"]
    # a changed file changes the key
    os.utime(root / "masks" / "0.png", ns=(1, 1))
    assert fingerprint("folder", root, LINES_OPTS)["cache"]["hit"] is False


def test_a_large_split_is_read_in_evenly_spread_images(tmp_path, monkeypatch):
    """Over MAX_SCAN_IMAGES images, that many spread evenly are read (the scan's cost stays
    bounded): the statistics are theirs, exact (the channel mean/std from per-channel
    histograms equal numpy's over those images), and the summary says how many were read."""
    from PIL import Image

    import fcnseg.plan.fingerprint as F

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(F, "MAX_SCAN_IMAGES", 5)
    monkeypatch.setattr(F, "MAX_COMPONENT_IMAGES", 3)
    root = make_lines(tmp_path / "lines", n=16)
    from fcnseg.data import build_dataset
    from fcnseg.data.stats import _indices

    samples = build_dataset("folder", root=root, split="train", **LINES_OPTS).samples  # less the carved val files
    n = len(samples)
    read = [samples[i] for i in _indices(n, 5)]
    fp = F.fingerprint("folder", root, LINES_OPTS, cache=False)
    assert n > 5 and fp["num_images"] == n and fp["scanned_images"] == 5
    assert fp["unmapped_values"] == ({"7": 1} if any(Path(m).name == "3.png" for _, m in read) else {})  # 3.png holds a stray 7
    px = np.concatenate([np.asarray(Image.open(img), np.float64).ravel() / 255 for img, _ in read])
    assert fp["channels"]["mean"] == pytest.approx([px.mean()] * 3, rel=1e-9)
    assert fp["channels"]["std"] == pytest.approx([px.std()] * 3, rel=1e-6)
    line = fp["per_class"][0]
    masks = [np.asarray(Image.open(m)) for _, m in read]
    assert line["frequency"] == pytest.approx(sum((m == 0).sum() for m in masks) / sum(((m == 0) | (m == 255)).sum() for m in masks))
    assert f"{n} images (5 of them read, spread evenly; scanned in" in F.format_fingerprint(fp)
    monkeypatch.setattr(F, "MAX_SCAN_IMAGES", 400)
    whole = F.fingerprint("folder", root, LINES_OPTS, cache=False)
    assert whole["scanned_images"] == n and f"{n} images (scanned in" in F.format_fingerprint(whole)


def test_layout_reads_an_up_in_street_like_masks_and_none_in_turned_ones():
    from fcnseg.plan.fingerprint import BANDS, _add_bands, _layout

    rng = np.random.default_rng(0)

    def layout_of(masks, k):
        rows, cols = np.zeros((k, BANDS)), np.zeros((k, BANDS))
        for m in masks:
            _add_bands(m, k, rows, cols)
        freq = rows.sum(1) / rows.sum()
        return _layout(rows, cols, freq)

    street = []
    for _ in range(6):  # sky on top, road below, a car on the left; a few ignored pixels
        m = np.zeros((48, 64), np.uint8)
        m[int(rng.integers(18, 26)):] = 1
        m[30:40, 4:20] = 2
        m[0, :3] = 255
        street.append(m)
    lay = layout_of(street, 3)
    assert lay["upside_down"] > 0.6 and lay["turned"] > 0.3
    # the same masks turned by a random quarter and mirrored at random: no up, no side left
    turned = [np.rot90(m, k).copy() for m in street for k in range(4)]
    turned += [t[:, ::-1].copy() for t in turned]
    free = layout_of(turned, 3)
    assert free["upside_down"] < 0.05 and free["turned"] < 0.05 and free["mirrored"] < 0.05
    one_side = layout_of([np.where(np.arange(64)[None, :] < 20, 2, 0).repeat(48, 0).astype(np.uint8)], 3)
    assert one_side["mirrored"] > 0.5  # the left class all of its share, the right one part


def test_fingerprint_of_a_read_only_folder_goes_to_the_cache_dir(tmp_path, monkeypatch):
    from fcnseg.plan.fingerprint import fingerprint

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    root = make_lines(tmp_path / "ro", n=4)
    root.chmod(0o555)
    try:
        fp = fingerprint("folder", root, LINES_OPTS)
    finally:
        root.chmod(0o755)
    assert Path(fp["cache"]["path"]).is_relative_to(tmp_path / "cache") and not (root / ".fcnseg").exists()


def test_probe_is_cached_per_machine(tmp_path, monkeypatch):
    import fcnseg.bench
    from fcnseg.plan import probe as probe_mod

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(model, *, size, batch, **kw):
        calls.append(size)
        step = 0.01 + 1e-6 * batch * size * size
        return {"train_ms_per_step": 1000 * step, "train_img_s_cpu": batch / step, "train_img_s_best": batch / step}

    monkeypatch.setattr(fcnseg.bench, "benchmark", fake)
    p = probe_mod.probe()
    assert p["cache"]["hit"] is False and calls == [128, 224]
    assert p["overhead_s"] == pytest.approx(0.01) and p["pixel_s"] == pytest.approx(1e-6)
    assert probe_mod.probe()["cache"]["hit"] is True and len(calls) == 2


# ------------------------------------------------------------------ CLI and the train round trip


@pytest.fixture
def fake_probe(monkeypatch):
    from fcnseg.plan import probe as probe_mod

    monkeypatch.setattr(probe_mod, "probe", lambda **kw: {**FAST, "machine": {"precision": "bf16", "cpu": "test", "gpu": None, "threads": 1},
                                                          "points": [{"model": "fcn4s", "backbone": "resnet18", "crop": 128, "batch": 8, "step_s": 0.03}], "seconds": 0.0})


def test_plan_cli_writes_a_config_that_train_runs(tmp_path, capsys, fake_probe, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    root = make_lines(tmp_path / "lines", n=10)
    out = tmp_path / "plan.yaml"
    data = ["--data", "folder", "--data-root", str(root), "--data-option", "classes={line: 0, cell: 255}"]
    assert main(["plan", *data, "--max-minutes", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "crop:" in printed and "class_weights: median_sqrt" in printed and f"wrote {out}" in printed
    assert yaml.safe_load(out.read_text())["data_options"]["unmapped"] == "ignore"  # the stray 7
    run = tmp_path / "run"
    assert main(["train", "--config", str(out), "--epochs", "1", "--max-minutes", "0", "--out", str(run), "--no-tensorboard", "--workers", "0", "--num-samples", "0"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] >= 1 and (run / "best.pt").is_file() and not (run / "plan.yaml").exists()


def test_train_without_config_plans_and_saves_plan_yaml(tmp_path, fake_probe, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    root = make_lines(tmp_path / "lines", n=10)
    run = tmp_path / "run"
    argv = ["train", "--data", "folder", "--data-root", str(root), "--data-option", "classes={line: 0, cell: 255}",
            "--data-option", "unmapped=ignore", "--epochs", "1", "--out", str(run), "--no-tensorboard", "--workers", "0", "--num-samples", "0"]
    assert main(argv) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    planned = yaml.safe_load((run / "plan.yaml").read_text())
    assert cfg["model"] == planned["model"] == "fcn4s" and cfg["epochs"] == 1 and planned["epochs"] == 1
    assert cfg["max_minutes"] is None  # --epochs without --max-minutes: the epochs decide, as without a plan
    assert cfg["workers"] == 0  # a flag given wins over the plan's 2


def test_train_no_plan_keeps_the_defaults(tmp_path, fake_probe):
    root = make_lines(tmp_path / "lines", n=10)
    run = tmp_path / "run"
    argv = ["train", "--no-plan", "--data", "folder", "--data-root", str(root), "--data-option", "classes={line: 0, cell: 255}",
            "--data-option", "unmapped=ignore", "--epochs", "1", "--out", str(run), "--no-tensorboard", "--num-samples", "0"]
    assert main(argv) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == "fcn8s" and not (run / "plan.yaml").exists()


@pytest.mark.parametrize("argv, says", [
    (["plan", "--data", "folder", "--data-root", "/no/such/folder"], "does not exist"),
    (["plan", "--data", "synthetic"], "needs no plan"),
    (["plan", "--data", "folder", "--data-root", "{root}", "--data-option", "classes={line: 0, cell: 255}", "--max-minutes", "-1"], "max_minutes must be > 0"),
])
def test_plan_cli_errors_are_one_line(tmp_path, capsys, argv, says, fake_probe):
    root = make_lines(tmp_path / "lines", n=3)
    assert main([a.replace("{root}", str(root)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnseg plan: error:") and says in err and "\n" not in err


def test_library_api():
    import fcnseg

    assert callable(fcnseg.plan) and "plan" in fcnseg.__all__
