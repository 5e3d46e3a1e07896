"""The end-of-run test-time choice (eval_tta / eval_crf "auto"): the pure rule with scripted
scores, the options built from a run's config, and a real run that writes the choice where
`fcnseg eval` reads it."""

from __future__ import annotations

import json

import pytest
import yaml

from fcnseg.config import resolve_config
from fcnseg.inference.specs import run_crf, run_tta, training_scale
from fcnseg.training.test_time import (
    CHOICE_IMAGES,
    CHOICE_UNITS,
    FIT_SHARE,
    MIN_CHOICE_IMAGES,
    choice_images,
    choice_options,
    choice_units,
    choose_test_time,
    tta_units,
)


def scripted(table: dict):
    """score(tta, crf) from a table {(tta, crf): mean IU}; records the calls."""
    calls = []

    def score(tta, crf):
        calls.append((tta, crf))
        return table[(tta, crf)]

    return score, calls


def test_a_costlier_setting_is_kept_only_when_it_pays_min_gain():
    ttas = ["scales=0.5", "flip,scales=0.5", "flip,scales=0.375,0.5,0.625"]
    crfs = [None, "default"]
    # flip adds 0.2 points (< 0.3: not kept), three scales add 1.5 over the base, the CRF 0.1 more
    score, calls = scripted({(ttas[0], None): 0.600, (ttas[1], None): 0.602, (ttas[2], None): 0.615, (ttas[2], "default"): 0.616})
    best, table = choose_test_time(ttas, crfs, score)
    assert (best["tta"], best["crf"]) == (ttas[2], None)  # the CRF's +0.1 did not pay
    assert calls == [(ttas[0], None), (ttas[1], None), (ttas[2], None), (ttas[2], "default")]  # the CRF on the best views
    assert [round(r["mean_iou"], 3) for r in table] == [0.6, 0.602, 0.615, 0.616]
    # a CRF that pays is kept
    score, _ = scripted({(ttas[0], None): 0.600, (ttas[1], None): 0.590, (ttas[2], None): 0.599, (ttas[0], "default"): 0.607})
    best, _ = choose_test_time(ttas, crfs, score)
    assert (best["tta"], best["crf"]) == (ttas[0], "default")  # no views paid: the CRF refines the base


def test_the_choice_skips_what_would_overrun_its_allowance(monkeypatch):
    import fcnseg.training.test_time as V

    now = [0.0]
    monkeypatch.setattr(V.time, "monotonic", lambda: now[0])
    ttas = [None, "flip,scales=1", "flip,scales=0.75,1,1.25"]  # 1, 2 and 6.25 units

    def score(tta, crf):
        now[0] += tta_units(tta)  # one second per unit of views
        return {None: 0.5, "flip,scales=1": 0.6, "flip,scales=0.75,1,1.25": 0.9}[tta]

    best, table = choose_test_time(ttas, [None], score, allowance_s=5.0)
    assert best["tta"] == "flip,scales=1"  # the 6.25-unit candidate would end at 9.25 s > 5 s
    assert "skipped" in table[-1] and "overrun" in table[-1]["skipped"]
    best, _ = choose_test_time(ttas, [None], score, allowance_s=None)
    assert best["tta"] == "flip,scales=0.75,1,1.25"


def test_the_crf_on_kept_maps_costs_only_the_crf(monkeypatch):
    """The CRF on the best views' kept probability maps is estimated (and started) at the CRF's
    cost alone; without kept maps it would run the views again and overrun the allowance."""
    import fcnseg.training.test_time as V

    now = [0.0]
    monkeypatch.setattr(V.time, "monotonic", lambda: now[0])
    ttas = [None, "flip,scales=0.75,1,1.25"]  # 1 and 6.25 units: 7.25 s

    def score(tta, crf):
        now[0] += V.CRF_UNITS if crf else tta_units(tta)
        return {None: 0.5, "flip,scales=0.75,1,1.25": 0.6}[tta] + (0.01 if crf else 0.0)

    allowance = 7.25 + V.CRF_UNITS + 1.0  # the CRF fits only without running the views again
    best, table = choose_test_time(ttas, [None, "default"], score, allowance_s=allowance, kept=lambda tta: True)
    assert (best["tta"], best["crf"]) == ("flip,scales=0.75,1,1.25", "default")
    now[0] = 0.0
    best, table = choose_test_time(ttas, [None, "default"], score, allowance_s=allowance, kept=lambda tta: False)
    assert best["crf"] is None and "overrun" in table[-1]["skipped"]


def test_a_view_set_that_would_leave_the_crf_no_time_is_skipped(monkeypatch):
    """The CRF (cheap, and +4-5 mean IU on thin lines) is never crowded out by a costlier view set
    that the allowance would hold without it; with only one CRF option the whole allowance goes
    to the views."""
    import fcnseg.training.test_time as V

    now = [0.0]
    monkeypatch.setattr(V.time, "monotonic", lambda: now[0])
    ttas = [None, "flip,scales=1", "flip,scales=0.75,1,1.25"]  # 1, 2 and 6.25 units

    def score(tta, crf):
        now[0] += V.CRF_UNITS if crf else tta_units(tta)  # one second per unit
        return {None: 0.5, "flip,scales=1": 0.6, "flip,scales=0.75,1,1.25": 0.61}[tta] + (0.05 if crf else 0.0)

    allowance = 1 + 2 + 6.25 + 1.0  # the last view set fits alone, not with the CRF after it
    best, table = choose_test_time(ttas, [None, "default"], score, allowance_s=allowance, kept=lambda tta: True)
    assert [(r["tta"], r["skipped"]) for r in table if "skipped" in r] == [("flip,scales=0.75,1,1.25", "~6s would leave the CRF no time in the choice's 10s")]
    assert (best["tta"], best["crf"]) == ("flip,scales=1", "default") and best["mean_iou"] == pytest.approx(0.65)
    now[0] = 0.0
    _, table = choose_test_time(ttas, [None], score, allowance_s=allowance)
    assert not [r for r in table if "skipped" in r]  # no CRF to try: the view set runs


def test_evaluate_refines_the_kept_maps_as_it_would_run_the_views():
    """evaluate(reuse=...) keeps each image's averaged probabilities (float16); the CRF on them
    scores as the CRF on views run again, without calling the model."""
    import torch

    from fcnseg.inference.evaluate import evaluate

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    dataset = [(torch.rand(3, 24, 32, generator=g), (torch.rand(24, 32, generator=g) * 3).long()) for _ in range(5)]
    dataset_classes = type("D", (list,), {"classes": ["a", "b", "c"]})(dataset)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    calls = []

    def model(x):
        calls.append(x.shape)
        return conv(x)

    common = dict(tta="flip,scales=0.75,1", mean=[0.5] * 3, std=[0.25] * 3)
    maps: dict = {}
    plain = evaluate(model, dataset_classes, reuse=maps, **common)
    assert sorted(maps) == list(range(5)) and all(m.dtype == torch.float16 and m.shape == (3, 24, 32) for m in maps.values())
    assert plain["mean_iou"] == evaluate(model, dataset_classes, **common)["mean_iou"]  # keeping changes nothing
    again = evaluate(model, dataset_classes, crf="default", **common)
    calls.clear()
    kept = evaluate(model, dataset_classes, crf="default", reuse=maps, **common)
    assert calls == []  # the views were not run again
    assert abs(kept["mean_iou"] - again["mean_iou"]) < 0.02 and kept["num_images"] == 5
    # float16 maps: the same labels but for a few pixels
    moved = (torch.tensor(kept["confusion"]) - torch.tensor(again["confusion"])).abs().sum() / 2
    assert float(moved) <= 0.01 * 5 * 24 * 32


def test_a_slow_machine_scores_every_option_on_fewer_images():
    # the CamVid plan on an AVX2-only CPU: one view over the 101 val frames took ~14 s, the
    # allowance was 144 s; 48 images would need ~320 s, so the seven scales were skipped
    k = choice_images(101, 14.0, 144.0)
    assert MIN_CHOICE_IMAGES <= k < CHOICE_IMAGES
    assert CHOICE_UNITS * 14.0 * k / 101 <= FIT_SHARE * 144.0 < CHOICE_UNITS * 14.0 * (k + 1) / 101  # as many as fit, with a margin
    assert choice_images(101, 3.0, 144.0) == CHOICE_IMAGES  # a fast machine: all 48
    assert choice_images(101, 100.0, 144.0) == MIN_CHOICE_IMAGES  # never fewer than 16 ...
    assert choice_images(4, 100.0, 10.0) == 4  # ... or than the split has
    assert choice_images(101, None, 144.0) == choice_images(101, 14.0, None) == CHOICE_IMAGES  # nothing measured
    assert choice_images(101, 14.0, 144.0, rotate90=True) < k  # the turned views cost more


def test_options_follow_the_training_scale_and_fixed_settings_stay():
    cfg = resolve_config({"eval_tta": "auto", "eval_crf": "auto", "scale": [0.375, 0.625]})
    assert training_scale(cfg.scale) == 0.5
    ttas, crfs = choice_options(cfg)
    assert ttas[0] == "scales=0.5" == run_tta(cfg.eval_tta, cfg.scale)  # validation during the run
    assert ttas[1] == "flip,scales=0.5" and ttas[-1] == "flip,scales=0.1875,0.25,0.375,0.5,0.625,0.75,0.875"
    assert crfs == [None, "default"] and run_crf(cfg.eval_crf) is None
    assert [tta_units(t) for t in ttas] == pytest.approx([0.25, 0.5, 1.5625, 4.4140625])
    cfg = resolve_config({"eval_tta": "flip", "eval_crf": "none"})
    assert choice_options(cfg) == (["flip"], ["none"])
    assert CHOICE_UNITS > sum(tta_units(t) for t in choice_options(resolve_config({"eval_tta": "auto"}))[0])


def test_a_rotate90_run_also_tries_turned_views_in_order_of_cost():
    cfg = resolve_config({"eval_tta": "auto", "rotate90": True, "scale": [0.75, 1.25]})
    ttas, _ = choice_options(cfg)
    assert "flip,rot90,scales=1" in ttas and "flip,rot90,scales=0.75,1,1.25" in ttas
    units = [tta_units(t) for t in ttas]
    assert units == sorted(units) and units[ttas.index("flip,rot90,scales=1")] == 8
    assert ttas[:3] == [None, "flip,scales=1", "flip,scales=0.75,1,1.25"]  # the mirrored sets come first where cheaper
    assert choice_units(True) > sum(units) and choice_units(False) == CHOICE_UNITS
    assert not any("rot90" in (t or "") for t in choice_options(resolve_config({"eval_tta": "auto"}))[0])


@pytest.mark.parametrize("eval_every", [0, 1])
def test_a_run_with_auto_writes_its_choice_where_eval_reads_it(tmp_path, eval_every):
    from test_train import tiny

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.inference.segment import checkpoint_inference
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", eval_tta="auto", eval_crf="auto", eval_every=eval_every, num_samples=0))
    result = json.loads((run / "metrics.json").read_text())
    tt = result["test_time"]
    measured = [r for r in tt["rows"] if "mean_iou" in r]
    assert len(measured) == 5 and tt["images"] == 8  # base, 3 view sets, the CRF on the best; 8 val images
    chosen = tt["chosen"]
    expect = measured[0]  # the rule, replayed on what the run measured
    for i, row in enumerate(measured[1:], 1):
        if i == 4:  # the CRF ran on the views chosen so far
            assert (row["tta"], row["crf"]) == (expect["tta"], "default")
        if row["mean_iou"] >= expect["mean_iou"] + 0.003:
            expect = row
    assert (chosen["eval_tta"], chosen["eval_crf"]) == (expect["tta"] or "none", expect["crf"] or "none")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["eval_tta"], saved["eval_crf"]) == (chosen["eval_tta"], chosen["eval_crf"])
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert (ckpt["config"]["eval_tta"], ckpt["config"]["eval_crf"]) == (chosen["eval_tta"], chosen["eval_crf"]), name
        tta, crf = checkpoint_inference(ckpt)
        assert (str(tta) if tta else "none", "default" if crf else "none") == (chosen["eval_tta"], chosen["eval_crf"])


def test_a_checkpoint_saved_before_the_choice_evaluates_with_one_view():
    from fcnseg.inference.segment import checkpoint_inference

    tta, crf = checkpoint_inference({"config": {"eval_tta": "auto", "eval_crf": "auto", "scale": [0.375, 0.625]}})
    assert str(tta) == "scales=0.5" and crf is None
    tta, crf = checkpoint_inference({"config": {"eval_tta": "auto", "eval_crf": "auto", "scale": [0.75, 1.25]}})
    assert tta is None and crf is None
