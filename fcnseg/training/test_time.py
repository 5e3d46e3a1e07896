"""The end-of-run test-time choice of ``eval_tta``/``eval_crf`` "auto": a pure rule over
measured scores (no torch here, so the planner reads its costs without importing it).

At the end of the run one view at the training scale, then mirrored views at 1, 3 and 7
multiples of it (and, for a run trained with ``rotate90``, mirrored and turned views at 1 and
3), cheapest first, then the CRF on the best of them (on their kept probability maps), are scored on (up to) ``CHOICE_IMAGES``
validation images spread over the split, cheapest first; a costlier setting is kept only when
it adds at least ``MIN_GAIN`` mean IU, and none is started that would overrun the choice's
share of the budget (``CHOICE_SHARE`` of max_minutes), nor a view set that would leave the CRF
no time. What it measured goes to metrics.json
(``test_time``); the choice goes into the run's config, so ``fcnseg eval``/``predict``/``serve``
apply it (``Validation.settle``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fcnseg.config import TrainConfig
from fcnseg.inference.specs import parse_tta, run_crf, run_tta, training_scale

# eval_tta "auto": one view at the training scale, then mirrored views at these multiples of it;
# the last is the CamVid recipe's seven scales (+3.7 mean IU there: docs/experiments/camvid.md)
TTA_FACTORS = ((1.0,), (0.75, 1.0, 1.25), (0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
# a run trained with rotate90 (data without an up) also tries the mirrored and turned views
# (8 a scale) at these multiples
ROT_FACTORS = ((1.0,), (0.75, 1.0, 1.25))
MIN_GAIN = 0.003  # a costlier test-time setting stays when it adds >= 0.3 mean IU points
CHOICE_SHARE = 0.08  # of max_minutes: what the choice may take (the time budget holds it back)
CHOICE_IMAGES = 48  # validation images it is measured on, spread over the split
# on a slow machine, fewer (at least this many) so that every option fits the allowance: on an
# AMD EPYC [AVX2 only: no AVX-512, no native bf16] (fp32) the CamVid plan's 48-image choice skipped the seven scales (the recipe's
# +3.7) for want of time, and finished 3.5 mean IU under the recipe
MIN_CHOICE_IMAGES = 16
# the share of the allowance those images are sized to: the choice's views ran ~20 % slower than
# the run's validation pace (0.243 against 0.204 s an image-view for a CamVid plan on an AVX2-only
# AMD EPYC, family 23 model 1), and sized to the whole allowance the seven scales did not fit
FIT_SHARE = 0.8
# the local dense CRF's cost in units of one plain view (its compiled loops: ~0.24 s against
# ~0.07 s a CamVid frame on 2 AMD EPYC [avx512_bf16 avx512f] cores; the torch loop took ~0.43 s);
# an estimate, used only to decide whether it still fits the choice's share
CRF_UNITS = 3.5
# the choice's total cost in views at the training scale: the one view, each mirrored set
# (2, 6.25, 17.7 views), then the CRF on the best set's kept probability maps
_SETS = [2 * sum(f * f for f in factors) for factors in TTA_FACTORS]
_ROT_SETS = [8 * sum(f * f for f in factors) for factors in ROT_FACTORS]
CHOICE_UNITS = 1 + sum(_SETS) + CRF_UNITS
# the probability maps the choice keeps for the CRF (float16, all sets together): a set that
# does not fit is run again under the CRF (its views' cost added to the CRF's)
KEEP_BYTES = 512 * 2**20


def choice_units(rotate90: bool = False) -> float:
    """The choice's cost in views at the training scale (CHOICE_UNITS; more for a rotate90 run)."""
    if not rotate90:
        return CHOICE_UNITS
    return 1 + sum(_SETS + _ROT_SETS) + CRF_UNITS


def choice_images(n_val: int, eval_s: float | None, allowance_s: float | None, rotate90: bool = False) -> int:
    """How many validation images the choice scores: CHOICE_IMAGES (at most the split), or, where
    all its options (``choice_units`` views each) would overrun ``allowance_s`` at the measured
    pace (``eval_s``: one view over the ``n_val`` images), as many as fit, at least
    MIN_CHOICE_IMAGES: every option tried on fewer images rather than the costliest skipped."""
    k = min(CHOICE_IMAGES, n_val)
    if not (allowance_s and eval_s and n_val):
        return k
    fit = int(FIT_SHARE * allowance_s / (choice_units(rotate90) * eval_s / n_val))
    return max(min(k, fit), min(MIN_CHOICE_IMAGES, n_val))


def tta_units(spec: str | None) -> float:
    """The cost of a TTA spec in plain full-size views (a view's pixels go with scale^2)."""
    tta = parse_tta(spec)
    if tta is None:
        return 1.0
    return sum(s * s for s in tta.scales) * tta.views / len(tta.scales)  # each scale's mirrored and turned views


def choice_options(cfg: TrainConfig) -> tuple[list[str | None], list[str | None]]:
    """The TTA and CRF settings the end-of-run choice scores, cheapest first (the first of
    each is what the run validated with); a fixed ``eval_tta``/``eval_crf`` is the only option."""
    base = run_tta(cfg.eval_tta, cfg.scale)
    if str(cfg.eval_tta).lower() == "auto":
        s = training_scale(cfg.scale)
        more = ["flip,scales=" + ",".join(f"{f * s:.4g}" for f in factors) for factors in TTA_FACTORS]
        if cfg.rotate90:
            more += ["flip,rot90,scales=" + ",".join(f"{f * s:.4g}" for f in factors) for factors in ROT_FACTORS]
        ttas = [base] + sorted(more, key=tta_units)
    else:
        ttas = [base]
    crfs = [None, "default"] if str(cfg.eval_crf).lower() == "auto" else [run_crf(cfg.eval_crf)]
    return ttas, crfs


def choose_test_time(ttas: list, crfs: list, score: Callable[[str | None, str | None], float], *, allowance_s: float | None = None,
                     min_gain: float = MIN_GAIN, kept: Callable[[str | None], bool] | None = None) -> tuple[dict, list[dict]]:
    """Scores ``ttas`` (each alone, cheapest first), then ``crfs[1:]`` on the best of them, with
    ``score(tta, crf) -> mean IU`` (timed here); keeps a setting only when it beats the best so
    far by ``min_gain``, and skips those whose estimated cost would overrun ``allowance_s``.
    ``kept(tta)``: whether ``score`` kept that setting's probability maps, so that the CRF on it
    costs only the CRF (else its views are run again).
    Returns the chosen ``{"tta", "crf", "mean_iou", "seconds"}`` and every row measured or skipped."""
    table: list[dict] = []
    spent = 0.0

    def run(tta, crf) -> dict:
        nonlocal spent
        t0 = time.monotonic()
        miou = float(score(tta, crf))
        row = {"tta": tta, "crf": crf, "mean_iou": miou, "seconds": time.monotonic() - t0}
        spent += row["seconds"]
        table.append(row)
        return row

    def consider(tta, crf, units: float, reserve: float = 0.0) -> None:
        nonlocal best
        if allowance_s is not None and spent + unit_s * (units + reserve) > allowance_s:
            why = "overrun" if spent + unit_s * units > allowance_s else "leave the CRF no time in"
            table.append({"tta": tta, "crf": crf, "skipped": f"~{unit_s * units:.0f}s would {why} the choice's {allowance_s:.0f}s"})
            return
        row = run(tta, crf)
        if row["mean_iou"] >= best["mean_iou"] + min_gain:
            best = row

    best = run(ttas[0], crfs[0])
    unit_s = best["seconds"] / tta_units(ttas[0])  # seconds of one full-size view over the images
    # a view set starts only where the CRF still fits after it: on thin synthetic lines the CRF
    # added 4-5 mean IU and three view sets had left it no time (docs/experiments/planner.md;
    # an AMD EPYC [AVX2 only: no AVX-512, no native bf16])
    reserve = CRF_UNITS if len(crfs) > 1 else 0.0
    for tta in ttas[1:]:
        consider(tta, crfs[0], tta_units(tta), reserve)
    for crf in crfs[1:]:  # the CRF refines the best views (their kept maps, else run again)
        consider(best["tta"], crf, CRF_UNITS + (0.0 if kept is not None and kept(best["tta"]) else tta_units(best["tta"])))
    return best, table
