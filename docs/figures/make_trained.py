"""The documentation's trained figures, made by training real models with the fcnseg CLI.

    python docs/figures/make_trained.py                 # trains 5 models (~47 min on 2 cores), draws all
    python docs/figures/make_trained.py --reuse         # keep runs/figures/* that already have best.pt
    python docs/figures/make_trained.py --only pet      # only the Pet figures (or camvid: the skips; gallery)

What it makes (PNG + the numbers in ``docs/figures/trained.json``, which the pages quote
through ``{{ fig.trained.* }}`` and ``tests/test_docs_trained.py`` checks):

* ``skips_camvid.png``: FCN-32s, 16s, 8s (and 4s, the shipped recipe's model) trained with
  ``configs/camvid.yaml`` for the same time budget on CamVid train, predictions on val
  frames with poles and signs; per-class val IoU in the JSON.
* ``camvid_gallery.png``: the CamVid recipe itself (``configs/camvid.yaml``, 30 minutes on the
  train split, the run ``benchmarks/plan_vs_recipe.py`` makes; ``--recipe``), with its saved
  test-time settings: image / ground truth / prediction / errors on the skips figure's frames.
* ``pet_samples.png`` and ``pet_curves.png``: a small FCN-8s trained from scratch on the 26
  Oxford-IIIT Pet images (20 trainval, scored on the 6 test images), and the all-background
  baseline on every trimap (the seed tutorial's "89 % after one epoch").

Each training run is one ``fcnseg train`` command, recorded in the JSON with its wall time:
the pages print those commands, so a reader reproduces the figures with them. Data:
``../shared/data`` next to the checkout (``--data`` to change it); without it the script stops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA = Path("../shared/data")  # relative to the checkout, as the commands print it
RUNS = Path("runs/figures")  # --runs changes it
SKIP_MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn4s")
LABEL = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s", "fcn4s": "FCN-4s (recipe)"}
# the whole run at the recipe's first-stage half resolution (144x192 crops of frames scaled
# 0.375-0.625, so the recipe's progressive stage is the same as the rest): ~3x the steps of full resolution in a short budget on a shared 2-core machine;
# scored at the same scale (0.5), the scores upsampled to the labels' 360x480
CAMVID_TTA = "scales=0.5"
PET_TTA = "scales=0.45"  # Pet frames are ~500x375; the model trains on 128x128 crops of frames scaled 0.3-0.6
EVAL_PRECISION = "auto"  # what `fcnseg eval` uses: bf16 on CPUs with bf16 instructions
THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist", "Fence")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    from fcnseg.precision import cpu_features

    flags = [f for f in ("amx_tile", "avx512_bf16", "avx512f") if f in cpu_features()] or ["avx2" if "avx2" in cpu_features() else "no avx2"]
    return f"{model} [{' '.join(flags)}], {os.cpu_count()} CPUs, torch {torch.__version__}"


def _train(args: list[str], out: Path, reuse: bool) -> dict:
    """Runs ``fcnseg train ARGS --out OUT`` (unless ``reuse`` and OUT/best.pt exists);
    returns the command as a reader types it, the wall time and the run's metrics.json."""
    cmd = ["fcnseg", "train", *args, "--out", str(out)]
    record = REPO / out / "figure_run.json"
    if not (reuse and (REPO / out / "best.pt").is_file() and record.is_file()):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fcnseg", *cmd[1:]], cwd=REPO, env=env, check=True)
        seconds = time.perf_counter() - t0
        record.write_text(json.dumps({"command": " ".join(cmd), "wall_seconds": round(seconds, 1),
                                      "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}))
    info = json.loads(record.read_text())
    metrics = json.loads((REPO / out / "metrics.json").read_text())
    info.update(steps=metrics.get("steps"), epochs=metrics.get("epochs"), precision=metrics.get("precision"),
                train_seconds=round(float(metrics.get("time_s") or 0.0), 1), stopped=metrics.get("stopped"))
    return info


def _frame_scores(pred: np.ndarray, mask: np.ndarray, k: int) -> dict:
    """Pixel accuracy and mean IU (%) of one frame, over the classes in its truth or prediction."""
    valid = mask != 255
    p, t = pred[valid], mask[valid]
    ious = []
    for c in range(k):
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(np.sum((p == c) & (t == c)) / union)
    return {"pixel_acc": round(100 * float(np.mean(p == t)), 1), "mean_iou": round(100 * float(np.mean(ious)), 1)}


def _pct(x: float) -> float:
    return round(100 * float(x), 1)


def _scores(s: dict) -> dict:
    return {"mean_iou": _pct(s["mean_iou"]), "pixel_acc": _pct(s["pixel_acc"]), "mean_acc": _pct(s["mean_acc"]),
            "per_class": {k: (None if v["iou"] != v["iou"] else _pct(v["iou"])) for k, v in s["per_class"].items()}}


def _errors(image: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image greyed and dimmed, wrong pixels red, void (not scored) pixels cream."""
    grey = image.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.45
    out = grey.astype(np.uint8)
    wrong = (pred != mask) & (mask != 255)
    out[wrong] = (230, 30, 30)
    out[mask == 255] = (224, 224, 192)
    return out


def _legend(fig, classes, palette, y: float = 0.0, ncol: int | None = None) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(fc=np.asarray(c) / 255.0, ec="grey", label=n) for n, c in zip(classes, palette, strict=True)]
    handles.append(Patch(fc=np.asarray((224, 224, 192)) / 255.0, ec="grey", label="void (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=ncol or len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, y))


def _save(fig, path: Path, dpi: int) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    print(f"  {path.name}: {path.stat().st_size / 1e3:.0f} kB", flush=True)


# --------------------------------------------------------------------------- CamVid


def camvid(data: Path, minutes: float, reuse: bool, out: Path, recipe_eval: bool) -> dict:
    import torch

    from fcnseg.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.show import colorize
    from fcnseg.inference.evaluate import evaluate, evaluate_checkpoint
    from fcnseg.inference.segment import segment

    root = data / "camvid"
    if not (REPO / root / "val").is_dir():
        raise SystemExit(f"{root}: no CamVid here (../shared/data or --data)")
    runs, models = {}, {}
    for name in SKIP_MODELS:
        args = ["--config", "configs/camvid.yaml", "--data-root", str(root), "--train-split", "train",
                "--max-minutes", f"{minutes:g}", "--crop", "144", "192", "--scale", "0.375", "0.625"]
        if name != "fcn4s":
            args += ["--model", name]
        runs[name] = _train(args, RUNS / f"camvid-{name}", reuse)
    val = build_dataset("camvid", root=REPO / root, split="val")
    classes, palette = list(val.classes), np.asarray(val.palette, np.uint8)
    k = len(classes)
    # frames: the val frames with the most pole + sign pixels, one per stretch of the sequence
    counts = []
    for i in range(len(val)):
        _, m = val.load(i)
        counts.append(int(np.isin(m, [classes.index("Pole"), classes.index("SignSymbol")]).sum()))
    order = np.argsort(counts)[::-1]
    frames: list[int] = []
    for i in order:
        if all(abs(int(i) - j) >= 12 for j in frames):
            frames.append(int(i))
        if len(frames) == 4:
            break
    names = [val.samples[i][0].stem if hasattr(val.samples[i][0], "stem") else str(i) for i in frames]
    preds: dict[str, list[np.ndarray]] = {}
    for name in SKIP_MODELS:
        ckpt = load_checkpoint(REPO / RUNS / f"camvid-{name}" / "best.pt")
        model = model_from_checkpoint(ckpt).eval()
        _, _, mean, std = checkpoint_meta(ckpt)
        t0 = time.perf_counter()
        s = evaluate(model, val, device="cpu", precision=EVAL_PRECISION, mean=mean, std=std, tta=CAMVID_TTA)
        models[name] = dict(_scores(s), eval_seconds=round(time.perf_counter() - t0, 1))
        preds[name] = []
        for i in frames:
            image, _ = val.load(i)
            x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            with torch.no_grad():
                preds[name].append(segment(model, [x], tta=CAMVID_TTA)[0].argmax(0).numpy())
        print(f"  {name}: val mean IU {models[name]['mean_iou']}, pixel acc {models[name]['pixel_acc']}", flush=True)
    recipe = None
    if recipe_eval:  # what `fcnseg eval` scores by default on this run: the recipe's TTA + CRF
        t0 = time.perf_counter()
        r = evaluate_checkpoint(REPO / RUNS / "camvid-fcn4s" / "best.pt", "camvid", REPO / root, "val",
                                precision=EVAL_PRECISION, backend="torch", device="cpu")
        recipe = dict(_scores(r), tta=r.get("tta"), crf=r.get("crf"), eval_seconds=round(time.perf_counter() - t0, 1),
                      command=f"fcnseg eval --checkpoint {RUNS}/camvid-fcn4s/best.pt --data camvid --data-root {root} --split val")
        print(f"  fcn4s with the recipe's TTA + CRF: {recipe['mean_iou']}", flush=True)

    from matplotlib.figure import Figure

    # skips: rows = frames, columns = image, truth, the four models
    cols = 2 + len(SKIP_MODELS)
    fig = Figure(figsize=(2.45 * cols, 1.95 * len(frames) + 0.5))
    axes = fig.subplots(len(frames), cols, squeeze=False)
    frame_scores: dict[str, list[dict]] = {n: [] for n in SKIP_MODELS}
    for r, i in enumerate(frames):
        image, mask = val.load(i)
        axes[r][0].imshow(image)
        axes[r][1].imshow(colorize(mask, palette))
        axes[r][0].set_ylabel(names[r], fontsize=8)
        for c, name in enumerate(SKIP_MODELS):
            pred = preds[name][r]
            sc = _frame_scores(pred, mask, k)
            frame_scores[name].append(sc)
            axes[r][2 + c].imshow(colorize(pred, palette))
            axes[r][2 + c].set_xlabel(f"mean IU {sc['mean_iou']}, acc {sc['pixel_acc']}", fontsize=8)
    for c, title in enumerate(["val image", "ground truth", *[LABEL[n] for n in SKIP_MODELS]]):
        axes[0][c].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(wspace=0.03, hspace=0.25, bottom=0.06)
    _legend(fig, classes, palette, y=-0.01)
    _save(fig, out / "skips_camvid.png", dpi=72)

    return {
        "source": "CamVid 11 classes, 360x480 (../shared/data/camvid): trained on the 367 train frames, scored on the 101 val frames",
        "budget_minutes": minutes,
        "runs": runs,
        "val": models,
        "val_recipe_eval": recipe,
        "frames": names,
        "frame_scores": frame_scores,
        "classes": classes,
        "eval": "at scale 0.5 (the training resolution), no flip, no CRF, precision auto; scores upsampled to the labels' 360x480",
        "eval_command": f"fcnseg eval --checkpoint {RUNS}/camvid-NAME/best.pt --data camvid --data-root {root} --split val --tta {CAMVID_TTA} --crf none",
    }


def gallery(data: Path, out: Path, recipe: Path, frames: list[str]) -> dict:
    """camvid_gallery.png: the CamVid recipe's own run (``configs/camvid.yaml``, 30 minutes on
    the train split: ``benchmarks/plan_vs_recipe.py`` writes it to ``RECIPE/recipe``) on the
    skips figure's frames, with the test-time settings it saved (the recipe's 14 views + CRF),
    as ``fcnseg eval``/``predict`` run it; its val scores from ``RECIPE/plan_vs_recipe.json``."""
    import torch

    from fcnseg.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.show import colorize
    from fcnseg.inference.segment import checkpoint_inference, segment

    scores = json.loads((REPO / recipe / "plan_vs_recipe.json").read_text())["recipe"]
    ckpt = load_checkpoint(REPO / recipe / "recipe" / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    _, _, mean, std = checkpoint_meta(ckpt)
    tta, crf = checkpoint_inference(ckpt)
    root = data / "camvid"
    val = build_dataset("camvid", root=REPO / root, split="val")
    classes, palette = list(val.classes), np.asarray(val.palette, np.uint8)
    stems = [val.samples[i][0].stem for i in range(len(val))]
    idx = [stems.index(f) for f in frames]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.45 * 4, 1.95 * len(idx) + 0.5))
    axes = fig.subplots(len(idx), 4, squeeze=False)
    frame_scores = []
    for r, i in enumerate(idx):
        image, mask = val.load(i)
        x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            pred = segment(model, [x], tta=tta, crf=crf, std=std, precision=EVAL_PRECISION)[0].argmax(0).numpy()
        sc = _frame_scores(pred, np.asarray(mask), len(classes))
        frame_scores.append(sc)
        axes[r][0].imshow(image)
        axes[r][0].set_ylabel(frames[r], fontsize=8)
        axes[r][1].imshow(colorize(mask, palette))
        axes[r][2].imshow(colorize(pred, palette))
        axes[r][2].set_xlabel(f"mean IU {sc['mean_iou']}, pixel acc {sc['pixel_acc']}", fontsize=8)
        axes[r][3].imshow(_errors(image, pred, np.asarray(mask)))
        axes[r][3].set_xlabel(f"{100 - sc['pixel_acc']:.1f} % of scored pixels wrong", fontsize=8)
    for c, title in enumerate(["val image", "ground truth", "prediction (recipe, 30 min)", "errors (red; void cream)"]):
        axes[0][c].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(wspace=0.03, hspace=0.25, bottom=0.06)
    _legend(fig, classes, palette, y=-0.06, ncol=6)
    _save(fig, out / "camvid_gallery.png", dpi=72)
    return {"command": scores["command"], "eval_command": scores["eval_command"], "steps": scores["steps"],
            "train_seconds": scores["train_s"], "eval_seconds": scores["eval_s"], "mean_iou": scores["mean_iou"],
            "pixel_acc": scores["pixel_acc"], "per_class": scores["per_class"], "tta": str(tta) if tta else None,
            "crf": "default" if crf else None, "frames": frames, "frame_scores": frame_scores}


# --------------------------------------------------------------------------- Oxford-IIIT Pet


def pet_baseline(data: Path) -> dict:
    """The all-background prediction on every trimap of the mini set, two ways: border as a
    class (the tutorial's three classes) and border not scored."""
    from PIL import Image

    tri = sorted((REPO / data / "oxford-pet-mini" / "annotations" / "trimaps").glob("*.png"))
    counts = np.zeros(4, np.int64)
    for p in tri:
        counts += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=4)[:4]
    pet, bg, border = (int(v) for v in counts[1:4])
    total = pet + bg + border
    # all-background: IU(background) = bg / total; pet and border IU 0 (predicted nowhere, present)
    three = {"pixel_acc": _pct(bg / total), "mean_iou": _pct(bg / total / 3)}
    two = {"pixel_acc": _pct(bg / (bg + pet)), "mean_iou": _pct(bg / (bg + pet) / 2)}
    return {"images": len(tri), "pixels": total, "fraction": {"pet": _pct(pet / total), "background": _pct(bg / total),
            "border": _pct(border / total)}, "all_background_3": three, "all_background_2": two}


def pet(data: Path, minutes: float, reuse: bool, out: Path) -> dict:
    import torch

    from fcnseg.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.show import colorize
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.inference.segment import segment

    root = data / "oxford-pet-mini"
    args = ["--data", "oxford-pet", "--data-root", str(root), "--train-split", "trainval", "--val-split", "test",
            "--model", "fcn8s", "--backbone", "resnet18", "--crop", "128", "--scale", "0.3", "0.6", "--eval-tta", PET_TTA,
            "--optimizer", "adamw", "--lr", "2e-3", "--batch-size", "8", "--epochs", "1000", "--max-minutes", f"{minutes:g}",
            "--eval-every", "8", "--seed", "0"]
    run = _train(args, RUNS / "pet-fcn8s", reuse)
    ckpt = load_checkpoint(REPO / RUNS / "pet-fcn8s" / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    _, palette, mean, std = checkpoint_meta(ckpt)
    test = build_dataset("oxford-pet", root=REPO / root, split="test")
    trainval = build_dataset("oxford-pet", root=REPO / root, split="trainval")
    kw = dict(device="cpu", precision=EVAL_PRECISION, mean=mean, std=std, tta=PET_TTA)
    s_test, s_train = evaluate(model, test, **kw), evaluate(model, trainval, **kw)
    events = [json.loads(ln) for ln in (REPO / RUNS / "pet-fcn8s" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    from matplotlib.figure import Figure

    # curves: training loss, and test mean IU / pixel accuracy in percent
    tr = [e for e in events if e.get("event") == "train" and e.get("loss") is not None]
    ev = [e for e in events if e.get("event") == "eval" and e.get("mean_iou") is not None]
    base = pet_baseline(data)
    fig = Figure(figsize=(11, 3.3))
    a0, a1 = fig.subplots(1, 2)
    a0.plot([e["epoch"] for e in tr], [e["loss"] for e in tr], lw=1.2)
    a0.axhline(np.log(3), color="grey", ls="--", lw=1)
    a0.text(0.99, np.log(3), "ln 3 (uniform guess) ", transform=a0.get_yaxis_transform(), ha="right", va="top", fontsize=8, color="grey")
    a0.set_title("training loss (cross-entropy)", fontsize=10)
    a1.plot([e["epoch"] for e in ev], [100 * e["mean_iou"] for e in ev], marker="o", ms=3, label="mean IU")
    a1.plot([e["epoch"] for e in ev], [100 * e["pixel_acc"] for e in ev], marker="o", ms=3, label="pixel accuracy")
    a1.axhline(base["all_background_3"]["pixel_acc"], color="C1", ls=":", lw=1)
    a1.axhline(base["all_background_3"]["mean_iou"], color="C0", ls=":", lw=1)
    a1.text(0.01, base["all_background_3"]["pixel_acc"], " all-background pixel accuracy", transform=a1.get_yaxis_transform(), va="bottom", fontsize=8, color="C1")
    a1.text(0.01, base["all_background_3"]["mean_iou"], " all-background mean IU", transform=a1.get_yaxis_transform(), va="bottom", fontsize=8, color="C0")
    a1.set_ylim(0, 100)
    a1.set_ylabel("%")
    a1.set_title("the 6 test images (%)", fontsize=10)
    a1.legend(fontsize=8, loc="upper right")
    for ax in (a0, a1):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save(fig, out / "pet_curves.png", dpi=80)

    # samples: the 6 test images, truth, prediction
    n = len(test)
    fig = Figure(figsize=(2.3 * n, 6.4))
    axes = fig.subplots(3, n, squeeze=False)
    per_image = []
    for c in range(n):
        image, mask = test.load(c)
        x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            pred = segment(model, [x], tta=PET_TTA)[0].argmax(0).numpy()
        sc = _frame_scores(pred, mask, 3)
        per_image.append(sc)
        axes[0][c].imshow(image)
        axes[0][c].set_title(test.samples[c][0].stem.replace("_", " "), fontsize=8)
        axes[1][c].imshow(colorize(mask, palette))
        axes[2][c].imshow(colorize(pred, palette))
        axes[2][c].set_xlabel(f"mean IU {sc['mean_iou']}", fontsize=8)
    for r, t in enumerate(("test image", "ground truth", "prediction")):
        axes[r][0].set_ylabel(t, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _legend(fig, ["pet", "background", "border"], palette, y=-0.02)
    _save(fig, out / "pet_samples.png", dpi=72)
    return {
        "source": "Oxford-IIIT Pet mini (../shared/data/oxford-pet-mini): trained on the 20 trainval images, scored on the 6 test images",
        "run": run,
        "test": _scores(s_test),
        "trainval": _scores(s_train),
        "per_image": per_image,
        "best_eval_epoch": max(ev, key=lambda e: e["mean_iou"])["epoch"] if ev else None,
        "baseline": base,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=("camvid", "gallery", "pet"), default=["camvid", "gallery", "pet"])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each CamVid model (default 10)")
    p.add_argument("--pet-minutes", type=float, default=5.0, help="training budget of the Pet model (default 5)")
    p.add_argument("--reuse", action="store_true", help="keep runs that already have best.pt (redraw only)")
    p.add_argument("--recipe-eval", action="store_true", help="also score the FCN-4s run with the recipe's TTA + CRF (slow)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--runs", type=Path, default=RUNS, help="where the training runs go (default runs/figures)")
    p.add_argument("--recipe", type=Path, default=Path("runs/plan-vs-recipe"),
                   help="benchmarks/plan_vs_recipe.py's --work folder: its 30-minute recipe run draws camvid_gallery.png")
    a = p.parse_args(argv)
    globals()["RUNS"] = a.runs
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "trained.json"
    numbers = json.loads(path.read_text()) if path.is_file() else {}
    t0 = time.perf_counter()
    if "camvid" in a.only:
        numbers["camvid"] = camvid(a.data, a.minutes, a.reuse, a.out, a.recipe_eval)
        numbers["camvid"]["made_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    if "gallery" in a.only:
        numbers["gallery"] = gallery(a.data, a.out, a.recipe, numbers["camvid"]["frames"])
        numbers["gallery"]["made_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    if "pet" in a.only:
        numbers["pet"] = pet(a.data, a.pet_minutes, a.reuse, a.out)
        numbers["pet"]["made_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    command = "python docs/figures/make_trained.py" + "".join(f" {v}" for v in (argv if argv is not None else sys.argv[1:]))
    for part in a.only:
        numbers[part]["figure_command" if part == "gallery" else "command"] = command
    numbers["machine"] = _machine()
    numbers["command"] = "python docs/figures/make_trained.py"
    path.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"all: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
