"""What the local dense CRF (``fcnseg.inference.crf``) buys a trained checkpoint, and what it costs.

For each checkpoint, the test-time-augmented probabilities of every val frame are computed
once (the run's own ``eval_tta``, or ``--tta``) and kept in memory (float16); each CRF
setting then refines them and is scored on the whole split and on its two halves (frames
``[0, split)`` and ``[split, N)`` in the dataset's order), so that a setting chosen on one
half can be judged on the other. Prints mean IU, global and class-average accuracy, per-class
IoU, and the CRF's seconds per frame (one process, the machine's threads):

    .venv/bin/python experiments/crf.py --checkpoint runs/AQ/best.pt runs/AR/best.pt \\
        --data-root ../shared/data/camvid --crf default appearance=2 smoothness=1

``none`` is always scored first (the probabilities as the TTA leaves them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.data import build_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.inference.crf import crf_refine, parse_crf
from fcnseg.inference.segment import parse_tta, segment
from fcnseg.metrics import ConfusionMatrix
from fcnseg.precision import resolve_precision


def _line(name: str, res: dict) -> str:
    return (
        f"{name:<44} mean IU {100 * res['mean_iou']:6.2f}  global {100 * res['pixel_acc']:6.2f}  "
        f"class-avg {100 * res['mean_acc']:6.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--data", default="camvid")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--tta", default=None, help="default: the checkpoint's eval_tta")
    ap.add_argument("--crf", nargs="+", default=["default"], metavar="SPEC", help="CRF settings to score (besides none)")
    ap.add_argument("--half", type=int, default=None, help="first frame of the second half (default N // 2)")
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args()

    precision = resolve_precision("auto", torch.device("cpu"))
    crfs = [parse_crf(s) for s in args.crf]
    for path in args.checkpoint:
        ckpt = load_checkpoint(path)
        tta = parse_tta(args.tta if args.tta is not None else (ckpt.get("config") or {}).get("eval_tta"))
        model = model_from_checkpoint(ckpt).eval()
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        normalised = build_dataset(args.data, root=args.data_root, split=args.split,
                                   transforms=eval_transforms(mean=ckpt["mean"], std=ckpt["std"]))
        raw = build_dataset(args.data, root=args.data_root, split=args.split)
        n = len(raw) if args.max_images is None else min(len(raw), args.max_images)
        half = n // 2 if args.half is None else args.half
        k = normalised.num_classes
        ignore = getattr(normalised, "ignore_index", 255)
        t0 = time.perf_counter()
        cached = []
        for i in range(n):
            x, y = normalised[i]
            p = segment(model, [x], out_sizes=[tuple(y.shape[-2:])], precision=precision, tta=tta, probs=True)[0]
            cached.append((p.to(torch.float16), y, torch.from_numpy(np.array(raw[i][0]))))
        print(f"{path}: {n} {args.split} frames, tta {tta}, {time.perf_counter() - t0:.0f}s for the probabilities")
        for name, crf in [("none", None), *[(str(c), c) for c in crfs]]:
            whole, halves = ConfusionMatrix(k, ignore), [ConfusionMatrix(k, ignore), ConfusionMatrix(k, ignore)]
            spent = 0.0
            for i, (p, y, colours) in enumerate(cached):
                p = p.float()
                if crf is not None:
                    t = time.perf_counter()
                    p = crf_refine(p, colours, crf)
                    spent += time.perf_counter() - t
                pred = p.argmax(0)
                whole.update(pred, y)
                halves[int(i >= half)].update(pred, y)
            res = whole.compute()
            first, second = halves[0].compute(), halves[1].compute()
            print(
                _line(f"  crf {name}", res)
                + f"  | frames 0-{half - 1}: {100 * first['mean_iou']:.2f}, {half}-{n - 1}: {100 * second['mean_iou']:.2f}"
                + (f"  | {spent / n:.3f} s/frame" if crf is not None else "")
            )
            print("    IoU " + " ".join(f"{100 * v:.1f}" for v in res["iou"]))


if __name__ == "__main__":
    main()
