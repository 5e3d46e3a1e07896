"""The trained figures' numbers (docs/figures/trained.json, written by
docs/figures/make_trained.py) against the pages that quote them and against themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_docs_site import hook as hooks  # the site's own hooks module, loaded once

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TRAINED = json.loads((DOCS / "figures" / "trained.json").read_text())
PET_MINI = REPO.parent / "shared" / "data" / "oxford-pet-mini"
MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn4s")
PAGES = ("tutorial/skips.md", "tutorial/pet.md", "tutorial/index.md", "results.md",
         "zh/tutorial/skips.md", "zh/tutorial/pet.md", "zh/tutorial/index.md")



def _rendered(page: str) -> str:
    """The page's markdown with every {{ fig.* }} replaced, as the site build does."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return hooks.FIG_VALUE.sub(lambda m: hooks._fig_value(DOCS, m.group("name"), m.group("path"), m.group("filter")), text)


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_quote_trained_json_and_nothing_is_left_unfilled(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    assert "fig.trained." in text, f"{page} no longer quotes trained.json"
    rendered = _rendered(page)  # a path missing from the JSON raises here
    assert "{{" not in rendered and "NARRATIVE" not in rendered


def test_the_skips_table_shows_every_models_per_class_iou_and_mean():
    for page in ("tutorial/skips.md", "zh/tutorial/skips.md"):
        rows = {line.split("|")[1].strip().strip("*"): [c.strip().strip("*") for c in line.split("|")[2:-1]]
                for line in _rendered(page).splitlines() if line.startswith("| ")}
        for name in TRAINED["camvid"]["classes"]:
            want = [hooks._format(TRAINED["camvid"]["val"][m]["per_class"][name]) for m in MODELS]
            assert rows[name] == want, (page, name)
        assert rows["mean IU"] == [hooks._format(TRAINED["camvid"]["val"][m]["mean_iou"]) for m in MODELS]


def test_the_pages_print_the_commands_that_made_the_figures():
    skips = _rendered("tutorial/skips.md")
    for m in MODELS:
        command = TRAINED["camvid"]["runs"][m]["command"]
        assert command.startswith("fcnseg train --config configs/camvid.yaml") and command in skips
        assert f"--max-minutes {TRAINED['camvid']['budget_minutes']:g}" in command
    assert TRAINED["pet"]["run"]["command"] in _rendered("tutorial/pet.md")
    # the same recipe for all four: the commands differ only in --model and --out
    strip = [re.sub(r"--model \S+|--out \S+", "", TRAINED["camvid"]["runs"][m]["command"]).split() for m in MODELS]
    assert all(s == strip[0] for s in strip)


def test_the_camvid_numbers_hang_together():
    camvid = TRAINED["camvid"]
    for m in MODELS:
        v = camvid["val"][m]
        ious = [x for x in v["per_class"].values() if x is not None]
        assert len(ious) == len(camvid["classes"]) == 11
        assert abs(np.mean(ious) - v["mean_iou"]) <= 0.1, m  # rounded per-class values
        assert 0 < v["mean_iou"] <= v["pixel_acc"] <= 100
        run = camvid["runs"][m]
        assert run["steps"] > 0 and run["train_seconds"] <= 60 * camvid["budget_minutes"] + 30
        assert len(camvid["frame_scores"][m]) == len(camvid["frames"])


def test_the_all_background_baseline_follows_from_the_class_shares():
    base = TRAINED["pet"]["baseline"]
    share = base["fraction"]
    assert abs(sum(share.values()) - 100) <= 0.15
    assert base["all_background_3"]["pixel_acc"] == share["background"]
    assert abs(base["all_background_3"]["mean_iou"] - share["background"] / 3) <= 0.06
    two = 100 * share["background"] / (share["background"] + share["pet"])
    assert abs(base["all_background_2"]["pixel_acc"] - two) <= 0.15
    assert abs(base["all_background_2"]["mean_iou"] - two / 2) <= 0.1


@pytest.mark.skipif(not PET_MINI.is_dir(), reason="../shared/data/oxford-pet-mini is absent")
def test_the_all_background_baseline_recomputed_from_the_trimaps():
    from PIL import Image

    counts = np.zeros(4, np.int64)
    trimaps = sorted((PET_MINI / "annotations" / "trimaps").glob("*.png"))
    for p in trimaps:
        counts += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=4)[:4]
    pet, background, border = counts[1:4]
    base = TRAINED["pet"]["baseline"]
    assert base["images"] == len(trimaps) and base["pixels"] == int(pet + background + border)
    assert base["all_background_3"]["pixel_acc"] == round(100 * background / (pet + background + border), 1)
    # the same as fcnseg's own metric on an all-background prediction
    import torch

    from fcnseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3, ignore_index=255)
    for p in trimaps:
        t = torch.from_numpy(np.asarray(Image.open(p)).astype(np.int64))
        target = torch.full_like(t, 255)
        target[t == 1], target[t == 2], target[t == 3] = 0, 1, 2
        cm.update(torch.ones_like(t), target)
    scores = cm.compute()
    assert round(100 * float(scores["pixel_acc"]), 1) == base["all_background_3"]["pixel_acc"]
    assert round(100 * float(scores["mean_iou"]), 1) == base["all_background_3"]["mean_iou"]


def test_the_trained_figures_are_committed_and_small():
    for name in ("skips_camvid", "camvid_gallery", "pet_samples", "pet_curves"):
        png = DOCS / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size < 1_000_000, name


def test_the_budget_curve_hangs_together_and_the_guide_quotes_it():
    """docs/figures/budget.json (make_budget.py): planned ISBI EM runs at several budgets."""
    budget = json.loads((DOCS / "figures" / "budget.json").read_text())
    assert budget["minutes"] == sorted(budget["minutes"]) and len(budget["minutes"]) >= 2
    for m in budget["minutes"]:
        r = budget["by_minutes"][f"{m:g}"]
        assert r["minutes"] == m and f"--max-minutes {m:g}" in r["command"] and r["command"].startswith("fcnseg train --data folder")
        assert r["steps"] > 0 and r["wall_seconds"] <= 60 * m + 90  # the budget holds (start-up included)
        assert abs(np.mean(list(r["per_class"].values())) - r["mean_iou"]) <= 0.02  # two classes, rounded
        assert 0 < r["mean_iou"] <= r["pixel_acc"] <= 100
        chosen = r["test_time"]
        measured = [row for row in r["test_time_rows"] if "mean_iou" in row]
        assert chosen and measured and (chosen["eval_tta"], chosen["eval_crf"]) in {(row["tta"] or "none", row["crf"] or "none") for row in measured}
    steps = [budget["by_minutes"][f"{m:g}"]["steps"] for m in budget["minutes"]]
    assert steps == sorted(steps)  # more minutes, more steps
    raw = (DOCS / "how-to" / "own-data.md").read_text(encoding="utf-8")
    assert "fig.budget." in raw
    rendered = _rendered("how-to/own-data.md")
    assert "{{" not in rendered
    for m in budget["minutes"]:
        assert budget["by_minutes"][f"{m:g}"]["command"] in rendered
    png = DOCS / "figures" / "own_data_budget.png"
    assert png.is_file() and png.stat().st_size < 500_000


def test_the_gallery_is_the_recipes_own_run_and_the_pages_quote_it():
    g = TRAINED["gallery"]
    assert g["command"].startswith("fcnseg train --config configs/camvid.yaml") and "--max-minutes 30" in g["command"]
    assert "--train-split train" in g["command"] and g["frames"] == TRAINED["camvid"]["frames"]
    assert abs(np.mean(list(g["per_class"].values())) - g["mean_iou"]) <= 0.01 and len(g["per_class"]) == 11
    assert g["tta"] and g["crf"] == "default"  # as `fcnseg eval` scores the recipe
    assert len(g["frame_scores"]) == len(g["frames"]) and all(0 < f["mean_iou"] <= 100 for f in g["frame_scores"])
    for page in ("results.md", "tutorial/skips.md", "zh/tutorial/skips.md"):
        text = _rendered(page)
        assert g["command"] in text and "fig.trained.gallery." in (DOCS / page).read_text(encoding="utf-8"), page
