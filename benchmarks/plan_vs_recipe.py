"""CamVid as a plain folder, planned by fcnseg, against the hand-tuned recipe (configs/camvid.yaml).

    python benchmarks/plan_vs_recipe.py --camvid ../shared/data/camvid --minutes 30 --work runs/plan-vs-recipe
    python benchmarks/plan_vs_recipe.py ... --sides plan          # the planned side only

The planned side sees CamVid as any user's folder would be: ``WORK/camvid-folder`` holds
``images/{train,val}`` and ``masks/{train,val}`` (links to the SegNet layout's ``train``,
``trainannot``, ``val``, ``valannot``) and a ``classes.yaml`` of the eleven classes (mask value 11,
void, ignored), and ``fcnseg train --data folder --data-root WORK/camvid-folder --max-minutes M``
plans from it (no recipe, no flags). The recipe side is ``fcnseg train --config
configs/camvid.yaml --train-split train --max-minutes M``. Both train on the 367 train frames, one
after the other, and ``fcnseg eval --json`` scores each best.pt on the 101 val frames with the
test-time settings the run saved (the plan's end-of-run choice; the recipe's 14 views + CRF).
Prints a Markdown table (mean IU, pixel accuracy, steps, train and eval seconds) and writes
``WORK/plan_vs_recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]


def camvid_folder(camvid: Path, work: Path) -> Path:
    root = work / "camvid-folder"
    for kind, suffix in (("images", ""), ("masks", "annot")):
        for split in ("train", "val"):
            link = root / kind / split
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((camvid / f"{split}{suffix}").resolve(), target_is_directory=True)
    lines = ["classes:"] + [f"  - {{name: {n}, value: {i}}}" for i, n in enumerate(CLASSES)] + ["ignore: [11]  # void"]
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    return root


def fcnseg(args: list[str], log: Path | None = None) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("$ fcnseg " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    if log is None:  # stdout returned (eval --json), stderr shown
        out = subprocess.run([sys.executable, "-m", "fcnseg", *args], cwd=REPO, env=env, check=True, stdout=subprocess.PIPE, text=True)
    else:  # everything into the log
        with open(log, "w") as f:
            out = subprocess.run([sys.executable, "-m", "fcnseg", *args], cwd=REPO, env=env, check=True, stdout=f, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - t0, out.stdout or ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camvid", type=Path, required=True, help="CamVid in the SegNet layout (train, trainannot, val, valannot)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--work", type=Path, default=Path("runs/plan-vs-recipe"))
    p.add_argument("--sides", nargs="+", choices=("plan", "recipe"), default=["plan", "recipe"])
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    results_path = a.work / "plan_vs_recipe.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for side in a.sides:
        out = a.work / side
        if side == "plan":
            train = ["train", "--data", "folder", "--data-root", str(camvid_folder(a.camvid, a.work)), "--max-minutes", f"{a.minutes:g}", "--out", str(out)]
        else:
            train = ["train", "--config", "configs/camvid.yaml", "--data-root", str(a.camvid), "--train-split", "train", "--max-minutes", f"{a.minutes:g}", "--out", str(out)]
        out.mkdir(parents=True, exist_ok=True)
        train_s, _ = fcnseg([*train, "--overwrite"], log=a.work / f"{side}.train.log")
        evaluate = ["eval", "--checkpoint", str(out / "best.pt"), "--json"]
        eval_s, text = fcnseg(evaluate)
        scores = json.loads(text[text.index("{"):])
        metrics = json.loads((out / "metrics.json").read_text())
        results[side] = {
            "command": "fcnseg " + " ".join(train), "eval_command": "fcnseg " + " ".join(evaluate),
            "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "steps": metrics["steps"],
            "mean_iou": round(100 * scores["mean_iou"], 2), "pixel_acc": round(100 * scores["pixel_acc"], 2),
            "per_class": {k: round(100 * v["iou"], 2) for k, v in scores["per_class"].items()},
            "tta": scores.get("tta"), "crf": scores.get("crf"), "test_time": metrics.get("test_time"),
        }
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| side | val mean IU | pixel acc | steps | train s | eval s | test-time |\n|---|---|---|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {r['mean_iou']:.2f} | {r['pixel_acc']:.2f} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} | {r['tta'] or 'none'} / {r['crf'] or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
