"""The planner: pure rules from a dataset fingerprint, a machine probe and a time budget to a
training config (``TrainConfig`` keys), each choice with a one-line reason.

Nothing here reads files or times anything: ``plan_config(fingerprint, probe, max_minutes)``
is a function of its arguments, tested on synthetic fingerprints (tests/test_plan.py). What it
knows comes from the hand-tuned CamVid recipe (configs/camvid.yaml, docs/experiments/camvid.md):
FCN-4s over a BN ResNet-18 from scratch, AdamW at 4e-3 with weight decay 1e-2 and a poly
schedule, square-root median-frequency class weights, the loss over the hardest quarter of the
pixels, copy-paste of rare small classes and a half-resolution first half of the budget. The
rules decide when each of those applies to data that is not CamVid (thin structures, two
classes, tens of images, no validation split, large or odd-sized images) and how large a crop
the budget buys on this machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fcnseg.training.test_time import CHOICE_IMAGES, CHOICE_SHARE, choice_units

MODEL, BACKBONE = "fcn4s", "resnet18"
# a class is thin when a 3x3 erosion removes at least this share of its pixels (lines of
# about 8 px or less: membranes, poles, wires, vessels): it keeps its resolution
THIN_EDGE_SHARE = 0.25
# a class is made of small objects when half of its pixels lie in objects under 2 % of the image
SMALL_OBJECT = 0.02
# the optimizer steps a from-scratch run needs before the crop may grow (below it, smaller or
# fewer crops per step); CamVid's 30-minute recipe takes ~4,700 (3,600 at half resolution)
MIN_STEPS = 250
# hard-pixel mining (the loss over the hardest 25 % of the pixels) only in runs of at least
# this many planned steps: with class weights it paid on CamVid's ~4,700 steps and collapsed
# short runs into one class (ISBI EM, Pet: docs/how-to/own-data.md)
MINING_STEPS = 1000
# the share of the budget the run loses to data loading, augmentation, logging and checkpoints
# beyond the probed step (the trainer's own TimeBudget then fits the schedule to the real pace)
STEP_OVERHEAD = 1.25
# a class layout this close to the same upside down and turned (fingerprint "layout", 0..1)
# has no up: quarter turns and vertical flips augment it. Measured: ISBI EM 0.03 / 0.03 (up
# to sampling noise: none), the Oxford-IIIT Pet images 0.10 / 0.06 (pets stand upright),
# CamVid 0.86 / 0.55
LAYOUT_FREE = 0.05
# a layout this far from its mirror image has a left and a right (left/right organs, one-sided
# traffic): horizontal flips would teach the wrong side
LAYOUT_SIDED = 0.25
# the longest side the model sees (larger images are scaled down; thin structures allow more)
MAX_SIDE, MAX_SIDE_THIN = 640, 1024
# ... but never so far that the short side falls under this (a 96x1800 panorama scaled to a
# 640 long side would be 34 px high: one row of FCN's stride-32 output)
MIN_SHORT_SIDE = 256
# a thin class's lines are ~2 / edge_share pixels wide (a 3x3 erosion takes a pixel off each
# side): large images are not scaled so far down that they fall under this many pixels
THIN_MIN_PX = 3.0
# where the thin classes are at least half of the classes (a vessel, crack or membrane map: their
# lines decide half the mean IU), lines under THIN_UP_PX are scaled up toward it, at most MAX_UP
# and not past MAX_SIDE_THIN: FCN-4s's stride-4 output draws no line much thinner than a cell, so
# a 2-3 px line comes out too thick. Measured (docs/experiments/planner.md, two synthetic line
# sets, 5 minutes, an AMD EPYC [AVX2 only: no AVX-512, no native bf16]): x2 gave +3.5 and +4.6
# mean IU in one view, +2.2 and +3.7 with the test-time views and CRF chosen; ISBI EM's ~5 px
# membrane x1.5 was neutral
# (docs/experiments/isbi-em.md, row U), so an upscale under MIN_UP is not worth its cost
THIN_UP_PX = 6.0
MAX_UP = 2.0
MIN_UP = 1.25
# a class of small objects: large images are not scaled so far down that its objects (the short
# side of those half its pixels lie in) fall under this many pixels (two cells of FCN-4s's output)
SMALL_MIN_PX = 8.0
MIN_CROP = 96
# at most 80 % of the image side, as the recipe crops CamVid (288x384 of 360x480): crops vary in place
CROP_FRACTIONS = (0.8, 0.65, 0.5, 0.42, 0.35, 0.3, 0.25, 0.2)
MIN_CONTEXT = 0.35  # the smallest crop (share of the image side) before a lower scale is tried
# a slower machine buys fewer steps: the final (full-resolution) stage should get at least this
# many, half of what the recipe's had on the machine it was tuned on (~1,000-1,100 of batch 8
# on a bf16 Zen 4/5), before the plan settles for fewer. It first spends what cost the recipe
# nothing there: batch 4 for batch 8 at the same pixels a second (row L of
# docs/experiments/camvid.md: 65.79 vs 65.99) and crops down to 65 % of the side (row BD,
# 240x320 for 288x384: 69.13, the recipe's seeds 68.1-69.5)
FINAL_STEPS = 500
FREE_FRACTION = 0.65


@dataclass
class Plan:
    config: dict  # TrainConfig keys: what `fcnseg train --config` reads
    reasons: dict[str, str]  # config key -> why
    estimate: dict = field(default_factory=dict)  # steps, seconds per step, ... as planned
    fingerprint: dict | None = None  # what it was planned from (fcnseg.plan.plan fills them)
    probe: dict | None = None

    def summary(self) -> str:
        """One line per choice: ``key: value  # reason``."""
        lines = []
        for key, reason in self.reasons.items():
            value = self.config.get(key)
            if key == "data_options" and not value:
                continue
            lines.append(f"  {key}: {_show(value)}  -- {reason}")
        e = self.estimate
        if e:
            lines.append(
                f"  (planned: ~{e['steps']} steps of {e['step_s']:.2f}s, {e['batch_pixels'] / 1e3:.0f}k pixels each, "
                f"~{e['epochs']:.0f} epochs of {e['train_images']} images)"
            )
        return "\n".join(lines)

    def yaml(self) -> str:
        """The config as YAML with each reason as a comment (``fcnseg train --config`` reads it)."""
        import yaml

        out = ["# planned by `fcnseg plan` from the data's fingerprint and this machine's probe;",
               "# edit freely: `fcnseg train --config THIS` runs it (flags given there still win)"]
        for key, value in self.config.items():
            text = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=1000).strip()
            text = text[1:-1] if text.startswith("{") else text
            reason = self.reasons.get(key)
            out.append(f"{text}" + (f"  # {reason}" if reason else ""))
        return "\n".join(out) + "\n"


def _show(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "; ".join(f"until {s['until']:g}: {s['crop'][0]}x{s['crop'][1]} at {s['scale'][0]:g}-{s['scale'][1]:g}" for s in value)
    return str(value)


def _round32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


def carve_count(total: int, fraction: float) -> int:
    """The images a seeded carve of ``fraction`` holds out of ``total`` (the count
    ``fcnseg.data.base.seeded_carve`` takes; read here without importing torch)."""
    n_val = int(round(fraction * total))
    return max(1, n_val) if fraction > 0 and total >= 2 else n_val


def side_scale(h: int, w: int, thin: bool) -> float:
    """The scale the side limits give: the long side down to MAX_SIDE (MAX_SIDE_THIN with thin
    classes), the short side not under MIN_SHORT_SIDE (above 1: no scaling)."""
    return max((MAX_SIDE_THIN if thin else MAX_SIDE) / max(h, w), MIN_SHORT_SIDE / min(h, w))


def thin_classes(fp: dict) -> list[int]:
    return [c for c, pc in enumerate(fp["per_class"]) if pc["frequency"] > 0 and pc["edge_share"] >= THIN_EDGE_SHARE]


def rare_classes(fp: dict) -> list[int]:
    """Classes below the median class's pixel share (median-frequency weight above 1)."""
    return [c for c, pc in enumerate(fp["per_class"]) if pc["frequency"] > 0 and pc["median_frequency_weight"] > 1.0 + 1e-9]


def small_object_classes(fp: dict) -> list[int]:
    return [c for c, pc in enumerate(fp["per_class"]) if 0 < pc.get("pixel_median_component_area", 1.0) < SMALL_OBJECT]


def step_seconds(probe: dict, batch: int, h: int, w: int) -> float:
    return probe["overhead_s"] + probe["pixel_s"] * batch * h * w


def steps_in(seconds: float, probe: dict, batch: int, crop: tuple[int, int], stages: list[dict]) -> tuple[int, int]:
    """(all optimizer steps, those of the final stage) that ``seconds`` buy: each progressive
    stage for its share of the time at its own crop, the rest at ``crop``."""
    done, steps = 0.0, 0.0
    for s in stages:
        steps += (s["until"] - done) * seconds / (STEP_OVERHEAD * step_seconds(probe, batch, *s["crop"]))
        done = s["until"]
    final = (1.0 - done) * seconds / (STEP_OVERHEAD * step_seconds(probe, batch, *crop))
    return int(steps + final), int(final)


def line_width(fp: dict, thin: list[int]) -> float:
    """The thinnest of the ``thin`` classes' line widths, px: ~2 / edge share."""
    return min(2.0 / max(fp["per_class"][c]["edge_share"], 1e-6) for c in thin)


def thin_min_scale(fp: dict, thin: list[int]) -> float:
    """The image scale that keeps the thinnest class's lines THIN_MIN_PX wide (0 without thin
    classes; at most 1)."""
    return min(1.0, THIN_MIN_PX / line_width(fp, thin)) if thin else 0.0


def thin_up_scale(fp: dict, thin: list[int]) -> float:
    """The scale (> 1) that brings the thinnest class's lines toward THIN_UP_PX where the thin
    classes are at least half of the classes present, at most MAX_UP and with the largest image's
    long side at most MAX_SIDE_THIN; 1 otherwise, or where it would be under MIN_UP."""
    present = [c for c, pc in enumerate(fp["per_class"]) if pc["frequency"] > 0]
    if not thin or 2 * len(thin) < len(present):
        return 1.0
    sizes = fp["image_sizes"]
    largest = max(sizes.get("max") or sizes["median"])  # no image is scaled past MAX_SIDE_THIN
    up = min(MAX_UP, THIN_UP_PX / line_width(fp, thin), MAX_SIDE_THIN / largest)
    return float(f"{up:.3g}") if up >= MIN_UP else 1.0


def small_min_scale(fp: dict, small: list[int]) -> float:
    """The image scale that keeps the objects of the classes ``small`` SMALL_MIN_PX across (0
    without; at most 1; fingerprints from before the object sizes were measured: 0)."""
    sides = [fp["per_class"][c].get("pixel_median_short_side", 0.0) for c in small]
    sides = [v for v in sides if v > 0]
    return min(1.0, SMALL_MIN_PX / min(sides)) if sides else 0.0


def choose_resolution(fp: dict, probe: dict, train_seconds: float, *, thin: bool, progressive_ok: bool, max_batch: int, min_scale: float = 0.0, up: float = 1.0) -> dict:
    """Scale, crop, batch and progressive stages. First the largest view at the full scale whose
    final stage gets FINAL_STEPS on this machine using only what cost the recipe nothing
    (batch 4 for 8, crops down to 65 % of the side); where none does, the one of those with the
    most steps; then the largest view of any scale or context whose steps reach MIN_STEPS (half
    of them on the final crops); at worst the fastest step there is. ``up`` > 1: the images are
    scaled up by it (thin lines, ``thin_up_scale``)."""
    h, w = fp["image_sizes"]["median"]
    # large images are scaled down to MAX_SIDE(_THIN), but never below min_scale (thin lines, small objects)
    base = up if up > 1 else float(f"{min(1.0, max(side_scale(h, w, thin), min_scale)):.3g}")
    # thin structures are not scaled below 3/4 of their size (a 4 px membrane would vanish); scaled
    # up, they stay there (the budget buys smaller crops instead)
    scales = [base] if up > 1 else [float(f"{f * base:.3g}") for f in ((1.0, 0.75) if thin else (1.0, 0.75, 0.5))]
    options = []  # in order of preference: scale, then crop context, then batch 8 before 4
    for si, s in enumerate(scales):
        last_scale = si == len(scales) - 1
        for f in CROP_FRACTIONS:
            crop = (min(_round32(f * h * s), _round32(h * s)), min(_round32(f * w * s), _round32(w * s)))
            if min(crop) < MIN_CROP or (f < MIN_CONTEXT and not last_scale):
                continue
            for batch in [b for b in (8, 4) if b <= max_batch] or [max_batch]:
                stages = []
                if progressive_ok and min(crop) >= 2 * MIN_CROP:
                    stages = [{"until": 0.5, "crop": [_round32(crop[0] / 2), _round32(crop[1] / 2)], "scale": [float(f"{0.375 * s:.4g}"), float(f"{0.625 * s:.4g}")]}]
                steps, final = steps_in(train_seconds, probe, batch, crop, stages)
                options.append({"scale": s, "crop": list(crop), "batch": batch, "stages": stages, "steps": steps, "final": final, "fraction": f})
    if not options:  # images smaller than MIN_CROP: the whole image
        crop = [_round32(h * base), _round32(w * base)]
        steps, final = steps_in(train_seconds, probe, min(8, max_batch), crop, [])
        return {"scale": base, "crop": crop, "batch": min(8, max_batch), "stages": [], "steps": steps, "final": final, "fraction": 1.0}
    enough = [o for o in options if o["steps"] >= MIN_STEPS and o["final"] >= MIN_STEPS // 2]
    free = [o for o in enough if o["scale"] == scales[0] and o["fraction"] >= FREE_FRACTION]
    for o in free:
        o["free"] = True
    if free:
        return next((o for o in free if o["final"] >= FINAL_STEPS), max(free, key=lambda o: o["final"]))
    if enough:
        return enough[0]
    return min(options, key=lambda o: o["batch"] * o["crop"][0] * o["crop"][1])  # the fastest step there is


def plan_config(fp: dict, probe: dict, max_minutes: float, *, workers: int = 2) -> Plan:
    """The planned TrainConfig keys for the data of ``fp`` on the machine of ``probe`` in
    ``max_minutes`` (final validation included), with a reason for each."""
    cfg: dict = {}
    why: dict[str, str] = {}

    def put(key: str, value, reason: str) -> None:
        cfg[key] = value
        why[key] = reason

    k = fp["num_classes"]
    names = fp["classes"]
    n = fp["num_images"]
    h, w = fp["image_sizes"]["median"]
    put("data", fp["data"], "the dataset")
    if fp.get("root") is not None:
        put("data_root", fp["root"], "its folder")
    options = dict(fp.get("options") or {})
    if fp.get("unmapped_values") and fp["data"] == "folder" and "unmapped" not in options:
        vals = ", ".join(fp["unmapped_values"])
        options["unmapped"] = "ignore"
        why["data_options"] = f"mask values {vals} are not in the classes file: read as ignore (not scored) instead of stopping"
    val = fp["val"]
    total = n + (val["images"] if val["carved"] else 0)
    if val["carved"] and fp["data"] in ("folder", "oxford-pet"):
        frac = options.get("val_fraction", 0.1)
        want = min(0.25, max(0.1, 4.0 / max(total, 1)))
        if "val_fraction" not in options and want > frac + 1e-9:
            options["val_fraction"] = round(want, 3)
        n_carved = carve_count(total, options.get("val_fraction", frac))
        n = total - n_carved
        if "val_fraction" in options and "val_fraction" not in (fp.get("options") or {}):
            cap = " (at most a quarter of the files; 4 wanted)" if n_carved < 4 else " (>= 4 wanted)"
            why["data_options"] = f"no val split: a seeded carve of {options['val_fraction']:.0%} of the {total} files, {n_carved} image{'s' * (n_carved != 1)}{cap}, validates the run"
        else:
            why.setdefault("data_options", f"no val split: the seeded {frac:.0%} carve of the files ({n_carved} image{'s' * (n_carved != 1)}) validates the run")
    elif not val["exists"]:
        why["data_options"] = "no validation split: the run is validated on its training images (not held-out figures)"
    cfg["data_options"] = options
    n_val = total - n if val["carved"] else (val["images"] if val["exists"] else n)
    put("val_split", "val" if val["exists"] else fp["split"], f"{n_val} validation image{'s' * (n_val != 1)}" if val["exists"] else "no other split to validate on")

    # model
    put("model", MODEL, "FCN-4s: the CamVid recipe's model; its stride-4 skip keeps small and thin shapes")
    put("backbone", BACKBONE, "ResNet-18 with BatchNorm: trains from scratch in minutes on a CPU")
    put("weights", None, "from scratch: no download; ImageNet weights are `--weights imagenet` where they pay")

    # resolution: what the budget buys on this machine
    thin = thin_classes(fp)
    up = thin_up_scale(fp, thin)
    budget_s = 60.0 * max_minutes
    # validation: a forward pass (~1/3 of a training step's cost per pixel) over the val images
    # at full size (scaled up with thin lines); at most 4 of them and at most ~10 % of the budget (the final one always runs)
    eval_once = n_val * probe["pixel_s"] / 3 * h * w * up * up + 1.0
    validations = int(min(4, max(1, 0.1 * budget_s // eval_once)))
    # the test-time choice at the end (eval_tta/eval_crf auto): its views on up to 48 val images
    lay = fp.get("layout")
    no_up = lay is not None and max(lay["upside_down"], lay["turned"]) < LAYOUT_FREE
    choice_s = min(CHOICE_SHARE * budget_s, choice_units(no_up) * (eval_once - 1.0) * min(CHOICE_IMAGES, n_val) / max(n_val, 1))
    # what is left for training: less the validations, the choice, checkpoints, pictures and start-up
    train_s = budget_s * 0.95 - validations * eval_once - choice_s - 5.0
    small_data = n < 2 * 8
    max_batch = max(2, min(8, n // 2))
    # half resolution first even with thin classes: CamVid's poles learn at full resolution in
    # the second half, and the recipe's first half paid (+2.6 mean IU, rows H -> M of docs/experiments/camvid.md)
    small_objects = small_object_classes(fp)
    thin_s, small_s = thin_min_scale(fp, thin), small_min_scale(fp, small_objects)
    res = choose_resolution(fp, probe, max(train_s, 1.0), thin=bool(thin), progressive_ok=True, max_batch=max_batch, min_scale=max(thin_s, small_s), up=up)
    s = res["scale"]
    side_s = side_scale(h, w, bool(thin))  # the scale the side limits alone give
    size_txt = "no thin class"
    if thin:
        lines = f"thin class(es) {', '.join(names[c] for c in thin)} (lines ~{line_width(fp, thin):.0f} px wide"
        size_txt = (f"{lines}, half the classes or more): the images scaled up {up:g}x, lines ~{line_width(fp, thin) * up:.0f} px, "
                    "for FCN-4s's stride-4 output to draw them") if up > 1 else f"{lines}) keep >= 3/4 of their width"
        if side_s < thin_s:
            if s >= thin_s * 0.995:
                size_txt += f"; the large images are scaled no lower than {thin_s:.3g} to keep them >= {THIN_MIN_PX:g} px"
            else:
                size_txt += (f"; the large images keep them >= {THIN_MIN_PX:g} px at {thin_s:.3g}, and go to 3/4 of that "
                             f"(lines ~{line_width(fp, thin) * s:.1f} px) for the steps this machine needs")
    if small_objects and side_s < small_s >= thin_s:
        size_txt += (f"; small objects ({', '.join(names[c] for c in small_objects)}) keep >= {SMALL_MIN_PX:g} px: "
                     f"the large images are scaled no lower than {small_s:.3g}")
    put("crop", res["crop"], f"{res['crop'][0]}x{res['crop'][1]} ({res['fraction']:.0%} of the {f'{round(h * s)}x{round(w * s)} scaled' if s != 1 else f'{h}x{w}'} image): "
        + (f"the largest view whose final stage gets >= {FINAL_STEPS} steps (~{res['final']} of ~{res['steps']}) on this machine"
           if res["final"] >= FINAL_STEPS else f"~{res['steps']} steps in the budget on this machine, ~{res['final']} of them on these crops"
           + (f" (fewer than the {FINAL_STEPS} wanted: the most that batch {min(4, res['batch'])} and crops >= {FREE_FRACTION:.0%} of the side buy)"
              if res.get("free") else f" (>= {MIN_STEPS // 2})" if res["final"] >= MIN_STEPS // 2
              else f" (fewer than the {MIN_STEPS // 2} wanted: the fastest step at this scale)")))
    put("scale", [round(0.75 * s, 4), round(1.25 * s, 4)], f"random rescaling around {s:.3g} x the image size; {size_txt}")
    put("progressive", res["stages"], "half resolution for the first half: ~3x the steps per second (CamVid: +2.6 mean IU, rows H -> M of docs/experiments/camvid.md)" if res["stages"]
        else f"none: a half-size crop would be under {MIN_CROP} px")
    put("batch_size", res["batch"], f"batch {res['batch']}" + (f": {n} training images" if small_data else (": the CamVid recipe's" if res["batch"] == 8 else ": smaller steps buy more of them on this machine")))
    if lay is not None and lay["mirrored"] > LAYOUT_SIDED:
        put("hflip", False, f"the classes sit on one side of the images (layout vs its mirror image: {lay['mirrored']:.2f} > {LAYOUT_SIDED}): no mirrored crops")
    else:
        put("hflip", True, "mirror images are as likely as the originals" + (f" (layout vs its mirror image: {lay['mirrored']:.2f})" if lay else ""))
    if no_up:
        put("rotate90", True, f"the class layout has no up (vs upside down {lay['upside_down']:.2f}, turned {lay['turned']:.2f}; < {LAYOUT_FREE}): "
            "quarter turns, with the mirror all 8 symmetries of the square, in training and as test-time views")
    else:
        put("rotate90", False, f"the class layout has an up (vs upside down {lay['upside_down']:.2f}, turned {lay['turned']:.2f})" if lay else "no layout measured")
    put("color_jitter", 0.2, "brightness/contrast/saturation jitter: the recipe's")

    # loss: class balance
    weights = [pc["median_frequency_weight"] for pc in fp["per_class"]]
    imbalance = max(weights) / max(min(w_ for w_ in weights if w_ > 0), 1e-9)
    if imbalance > 2.0 or thin:
        put("class_weights", "median_sqrt", f"classes are unbalanced (median-frequency weights {min(weights):.2f}..{max(weights):.2f}): square-root median-frequency weights, the recipe's softer balance")
    else:
        put("class_weights", "none", f"classes are balanced enough (weights {min(weights):.2f}..{max(weights):.2f})")
    rare, small = set(rare_classes(fp)), set(small_object_classes(fp))
    paste = [c for c in range(k) if c in rare and c in small]
    if paste and k >= 2:
        put("copy_paste", 0.5, f"rare classes made of small objects ({', '.join(names[c] for c in paste)}): half the crops get them pasted from another crop")
        put("paste_classes", [names[c] for c in paste], "below the median pixel share and half their pixels in objects < 2 % of the image")
    else:
        put("copy_paste", 0.0, "no rare class of small objects to paste")
        put("paste_classes", None, "not used")
    if k == 2:
        # measured: on ISBI EM (3 minutes on a loaded 2-core machine, 45 steps) weights and mining
        # together drove every pixel to the rarer class (docs/how-to/own-data.md)
        put("hard_pixels", 1.0, "every pixel: with two classes the class weights balance them; mining (a multi-class finding on CamVid) would add to it")
    elif (rare or thin) and res["steps"] < MINING_STEPS:
        # measured: on the Pet images (16 training images, ~200 steps) weights and mining
        # together put every pixel in the rare border class (docs/how-to/own-data.md)
        put("hard_pixels", 1.0, f"every pixel: ~{res['steps']} steps are too few for mining the hardest pixels (CamVid's gain came with ~4,700)")
    elif rare or thin:
        put("hard_pixels", 0.25, "the loss over the hardest 25 % of the pixels: rare/thin classes and boundaries (+ on CamVid)")
    else:
        put("hard_pixels", 1.0, "every pixel: no rare or thin class")

    # optimisation
    lr = 4e-3 * math.sqrt(res["batch"] / 8)
    put("optimizer", "adamw", "AdamW: the recipe's")
    put("lr", float(f"{lr:.3g}"), "4e-3 at batch 8 (CamVid: +1.2 mean IU over 2e-3)" + (f", x sqrt({res['batch']}/8)" if res["batch"] != 8 else ""))
    put("weight_decay", 1e-2, "the recipe's")
    put("schedule", "poly", "poly decay fitted to the time budget")
    warm = int(min(100, max(10, res["steps"] // 10)))
    put("warmup_steps", warm, f"~10 % of the ~{res['steps']} planned steps (at most 100)")
    # the epoch cap must never end the run first, even on a machine much faster than the probe
    # said: a 30-minute plan of 26 images (3 steps an epoch) once stopped at 1000 epochs, 20 minutes in
    epochs = res["steps"] * res["batch"] / max(n, 1)
    cap = max(1000, 10 * math.ceil(epochs))
    put("epochs", cap, f"10x the ~{epochs:.0f} epochs planned (at least 1000): the time budget ends the run")
    put("max_minutes", float(max_minutes), "the budget, final validation included")

    # validation and evaluation
    every = max(1, math.ceil(epochs / validations))
    put("eval_every", every, f"~{validations} validation(s) of ~{eval_once:.0f}s in ~{epochs:.0f} epochs (best.pt is the best of them; the last one always runs)")
    put("eval_tta", "auto", f"chosen on {min(CHOICE_IMAGES, n_val)} validation images at the end of the run (~{choice_s:.0f}s held back): one view at the training scale {s:g}, "
        "then mirrored views at 1, 3 and 7 scales" + (", mirrored and turned ones at 1 and 3" if no_up else "") + ", each kept only if it adds >= 0.3 mean IU")
    put("eval_crf", "auto", "the local dense CRF on the best views, kept only if it adds >= 0.3 mean IU (CamVid: +0.7)")

    # machine
    put("precision", "auto", f"{probe['machine']['precision']} on this machine")
    put("workers", workers, "loader processes beside the training step")
    mem = total * h * w * 4
    put("preload", mem < 2 * 2**30, f"decode the {total} pairs once (~{mem / 2**20:.0f} MiB)" if mem < 2 * 2**30 else "too large to hold in memory")
    put("seed", 0, "reproducible")
    step_s = step_seconds(probe, res["batch"], *res["crop"]) * STEP_OVERHEAD
    estimate = {
        "steps": res["steps"], "step_s": step_s, "batch_pixels": res["batch"] * res["crop"][0] * res["crop"][1],
        "epochs": epochs, "train_images": n, "train_seconds": train_s,
    }
    return Plan(cfg, why, estimate)


def apply_given(plan: Plan, given: dict) -> Plan:
    """The plan with explicit options (flags, a notebook's dict) on top: they always win; the
    reason says so."""
    cfg, why = dict(plan.config), dict(plan.reasons)
    for key, value in given.items():
        if key in ("config",):
            continue
        if key == "data_options":
            value = {**cfg.get("data_options", {}), **value}
        cfg[key] = value
        why[key] = "given"
    return Plan(cfg, why, plan.estimate, plan.fingerprint, plan.probe)
