"""A planner rule against the same plan without it, for the synthetic-data experiments
(``large_images.py``, ``thin_lines.py``): each side is planned in its own process with the rule's
constants in ``fcnseg/plan/planner.py`` zeroed on the "norule" side, trained, and its best.pt
scored with ``fcnseg eval --backend torch --json`` (the views its run chose) on the carved val
images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SIDES = ("rule", "norule")


def plan_side(root: Path, out: Path, minutes: float, side: str, constants: tuple[str, ...]) -> None:
    """Writes the plan of ``side`` to ``out`` (run in its own process: it changes the planner's globals)."""
    from fcnseg.cli import main
    from fcnseg.plan import planner

    if side == "norule":
        for name in constants:
            setattr(planner, name, 0.0)
    main(["plan", "--data", "folder", "--data-root", str(root), "--max-minutes", str(minutes), "--out", str(out)])


def run_sides(script: str, work: Path, minutes: float, sides=SIDES) -> dict:
    """Plans (``script --work WORK --minutes M --side S``), trains and scores each side; writes and
    returns {side: mean IU, per-class IoU, the chosen views and CRF, steps}."""
    scores = {}
    for side in sides:
        subprocess.run([sys.executable, script, "--work", str(work), "--minutes", str(minutes), "--side", side], check=True)
        run = work / side
        subprocess.run([sys.executable, "-m", "fcnseg", "train", "--config", str(work / f"{side}.yaml"), "--out", str(run)], check=True)
        out = subprocess.run([sys.executable, "-m", "fcnseg", "eval", "--checkpoint", str(run / "best.pt"), "--backend", "torch", "--json"],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        scores[side] = {"mean_iu": round(100 * r["mean_iou"], 2), "steps": json.loads((run / "metrics.json").read_text())["steps"],
                        "iou": {c: round(100 * v["iou"], 2) for c, v in r["per_class"].items()}, "tta": r["tta"], "crf": r["crf"]}
        print(side, scores[side], flush=True)
    (work / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores
