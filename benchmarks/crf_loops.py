"""The CRF's two loops on one real frame: the compiled one (numba, the CPU default) against the
torch operations, interleaved rounds in one process, medians; and their largest difference.

    python benchmarks/crf_loops.py [--image FRAME.png] [--classes 11] [--rounds 5]

The probabilities are a fixed random softmax map (the CRF's cost does not depend on them); the
image is a CamVid val frame (or any RGB file), the window the default CRF's.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time

import numpy as np
import torch
from PIL import Image

import fcnseg.inference.crf as crf_module
from fcnseg.bench import cpu_name
from fcnseg.inference.crf import CRF, crf_refine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=None, help="an RGB image (default: the first CamVid val frame beside the checkout)")
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    path = args.image or sorted(glob.glob("../shared/data/camvid/val/*.png"))[0]
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()
    probs = (3 * torch.randn(args.classes, *image.shape[1:], generator=torch.Generator().manual_seed(0))).softmax(0)
    compiled = crf_module._kernel()
    if compiled is None:
        raise SystemExit("numba's compiled loops are not available here")
    loops = {"compiled": compiled, "torch": None}
    times: dict[str, list[float]] = {k: [] for k in loops}
    outs = {}
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, kernel in loops.items():
            crf_module._kernel = lambda k=kernel: k
            t = time.perf_counter()
            outs[name] = crf_refine(probs, image, CRF())
            times[name].append(time.perf_counter() - t)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; {path} ({image.shape[1]}x{image.shape[2]}), {args.classes} classes, default CRF")
    for name, ts in times.items():
        print(f"  {name:8s} {1000 * statistics.median(ts[1:]):6.0f} ms (median of {args.rounds})")
    print(f"  max |difference| of the refined probabilities: {(outs['compiled'] - outs['torch']).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
