"""Large images with thin lines or small objects: the planner's THIN_MIN_PX and SMALL_MIN_PX
rules against the same plan without them.

Writes a synthetic folder dataset (14 RGB 2000x3000 JPEGs; ``--kind lines``: 40 random 4-px
lines, the "vessel" class; ``--kind blobs``: 300 discs of radius ``--radius`` (5-9) px, the "cell" class; 0/1
masks, a classes file), plans a run of ``--minutes`` twice (the current rules; the same with
both minimums at 0, i.e. large images scaled to 1024 / 640 px on their long side), trains each
and scores each best.pt with ``fcnseg eval --backend torch`` on the carved val images.

    PYTHONPATH=. .venv/bin/python experiments/large_images.py --kind lines --work runs/thin-lines [--minutes 2]
    PYTHONPATH=. .venv/bin/python experiments/large_images.py --kind blobs --radius 10 13 --work runs/small-cells [--minutes 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rule_sides import SIDES, plan_side, run_sides


def make_data(root: Path, kind: str, radius=(5, 9), n: int = 14, size=(2000, 3000), seed: int = 2) -> None:
    import cv2
    import yaml
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        if kind == "lines":
            for _ in range(40):
                p = rng.integers(0, [w, h], size=(2,))
                q = p + rng.integers(-600, 600, size=(2,))
                cv2.line(m, tuple(int(v) for v in p), tuple(int(v) for v in q), 1, thickness=4)
        else:
            for _ in range(300):
                cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(radius[0], radius[1] + 1)), 1, thickness=-1)
        im = (150 - 60 * m + rng.normal(0, 25, m.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([im, im // 2 + 60, im])).save(root / "images" / f"{i}.jpg", quality=92)
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    name = "vessel" if kind == "lines" else "cell"
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [{"name": "background", "value": 0}, {"name": name, "value": 1}]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--kind", choices=("lines", "blobs"), default="lines")
    ap.add_argument("--radius", type=int, nargs=2, default=(5, 9), metavar=("MIN", "MAX"), help="the discs' radii, px")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one plan, in its own process
    args = ap.parse_args()
    work = Path(args.work)
    data = work / "data"
    if args.side:
        plan_side(data, work / f"{args.side}.yaml", args.minutes, args.side, ("THIN_MIN_PX", "SMALL_MIN_PX"))
        return
    if not (data / "classes.yaml").is_file():
        make_data(data, args.kind, tuple(args.radius))
    run_sides(__file__, work, args.minutes)


if __name__ == "__main__":
    main()
