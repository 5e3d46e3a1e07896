"""Thin lines (1-5 px) in two-class data: the planner's THIN_UP_PX rule (the images scaled up so
the lines are drawn by FCN-4s's stride-4 output) against the same plan without it.

Writes a synthetic folder dataset (``--images`` grayscale PNGs of ``--size`` H W; smooth random
curves of ``--widths`` px, darker than a blotchy, noisy background; a "vessel" class; 0/1 masks,
a classes file, no val split), plans a run of ``--minutes`` twice (the current rules; the same
with THIN_UP_PX at 0, i.e. no scaling up), trains each and scores each best.pt with
``fcnseg eval --backend torch`` (the views the run chose) on the carved val images
(``rule_sides.py``).

    PYTHONPATH=. .venv/bin/python experiments/thin_lines.py --work runs/thin-up [--minutes 5]
    PYTHONPATH=. .venv/bin/python experiments/thin_lines.py --work runs/cracks --size 320 480 --images 60 --widths 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rule_sides import SIDES, plan_side, run_sides


def make_data(root: Path, n: int, size: tuple[int, int], widths: tuple[int, int], seed: int = 7) -> None:
    import cv2
    import yaml
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        for _ in range(max(4, h * w // 12000)):  # smooth random walks of 60 steps of 5 px
            p = rng.uniform(0, [w, h])
            a = rng.uniform(0, 2 * np.pi)
            pts = [p.copy()]
            for _ in range(60):
                a += rng.normal(0, 0.25)
                p = p + 5 * np.array([np.cos(a), np.sin(a)])
                pts.append(p.copy())
            cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness=int(rng.integers(widths[0], widths[1] + 1)))
        bg = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6)
        blobs = np.zeros((h, w), np.float32)
        for _ in range(15):  # dark blobs: distractors
            cv2.circle(blobs, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(4, 12)), 1.0, -1)
        line = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 0.7)
        im = 140 + 40 * bg / (bg.std() + 1e-6) - 45 * line - 35 * cv2.GaussianBlur(blobs, (0, 0), 2) + rng.normal(0, 12, (h, w))
        Image.fromarray(im.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(m).save(root / "masks" / f"{i:03d}.png")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [{"name": "background", "value": 0}, {"name": "vessel", "value": 1}]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, nargs=2, default=(384, 384), metavar=("H", "W"))
    ap.add_argument("--widths", type=int, nargs=2, default=(1, 3), metavar=("MIN", "MAX"), help="the lines' OpenCV thickness range")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one plan, in its own process
    args = ap.parse_args()
    work = Path(args.work)
    data = work / "data"
    if args.side:
        plan_side(data, work / f"{args.side}.yaml", args.minutes, args.side, ("THIN_UP_PX",))
        return
    if not (data / "classes.yaml").is_file():
        make_data(data, args.images, tuple(args.size), tuple(args.widths))
    run_sides(__file__, work, args.minutes, args.sides)


if __name__ == "__main__":
    main()
