"""Where a checkpoint's errors lie: the share of its wrong pixels at each distance (px) from the
nearest pixel of another true class, on its validation split, and per class the pixels it
added (false positives) and missed (false negatives).

    PYTHONPATH=. .venv/bin/python experiments/error_distance.py --checkpoint runs/em/best.pt [--tta flip,scales=0.75,1,1.25] \
        [--offset-class membrane --offsets -0.5 -0.25 0 0.25]

Errors piled at distance 1-2 are boundary placement (what a finer output or a CRF can move);
errors far from any boundary are whole structures missed or invented. ``--offsets``: the mean IU
with each constant added to one class's log-probability before the argmax (a class drawn
thicker or thinner after training).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default=None, help="default: the run's validation split")
    ap.add_argument("--tta", default=None, help="test-time views (default: one view at the training scale)")
    ap.add_argument("--max-distance", type=int, default=10)
    ap.add_argument("--offset-class", default=None, help="the class whose log-probability --offsets shift")
    ap.add_argument("--offsets", type=float, nargs="*", default=[])
    a = ap.parse_args()

    from fcnseg.checkpoint import (
        checkpoint_data,
        checkpoint_meta,
        load_checkpoint,
        model_from_checkpoint,
    )
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.inference.segment import segment
    from fcnseg.inference.specs import run_tta

    ck = load_checkpoint(a.checkpoint)
    model = model_from_checkpoint(ck).eval()
    name, root, options, split = checkpoint_data(ck["config"], split=a.split)
    classes, _, mean, std = checkpoint_meta(ck)
    ds = build_dataset(name, root=root, split=split, transforms=eval_transforms(mean=mean, std=std), **options)
    tta = a.tta or run_tta("auto", ck["config"].get("scale"))
    k, top = len(classes), a.max_distance + 1
    wrong, total = np.zeros(top + 1, np.int64), np.zeros(top + 1, np.int64)
    conf = np.zeros((k, k), np.int64)
    if a.offsets and a.offset_class not in classes:
        ap.error(f"--offset-class {a.offset_class!r}: one of {', '.join(classes)}")
    shifted = {o: np.zeros((k, k), np.int64) for o in a.offsets}
    for i in range(len(ds)):
        x, y = ds[i]
        with torch.no_grad():
            logp = segment(model, [x], tta=tta, probs=True)[0].clamp_min(1e-8).log().numpy()
        p = logp.argmax(0)
        y = y.numpy()
        valid = y != 255
        for o, m in shifted.items():
            q = logp.copy()
            q[classes.index(a.offset_class)] += o
            m += np.bincount(y[valid] * k + q.argmax(0)[valid], minlength=k * k).reshape(k, k)
        # each pixel's distance to the nearest pixel of another true class
        d = np.full(y.shape, np.inf)
        for c in np.unique(y[valid]):
            inside = y == c
            d[inside] = ndimage.distance_transform_edt(inside)[inside]
        bins = np.minimum(np.ceil(d[valid]).astype(np.int64), top)
        np.add.at(total, bins, 1)
        np.add.at(wrong, bins[(p != y)[valid]], 1)
        conf += np.bincount(y[valid] * k + p[valid], minlength=k * k).reshape(k, k)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    print(f"{a.checkpoint} on {name}/{split} ({len(ds)} images), views {tta or 'one'}: mean IU {100 * iou.mean():.2f}")
    print("| distance to another class (px) | wrong / pixels there | share of all errors |\n|---|---:|---:|")
    for dist in range(1, top + 1):
        label = f">= {dist}" if dist == top else str(dist)
        print(f"| {label} | {wrong[dist] / max(total[dist], 1):.3f} | {wrong[dist] / max(wrong.sum(), 1):.3f} |")
    print("| class | IoU | added (false positives) | missed (false negatives) |\n|---|---:|---:|---:|")
    for c, cname in enumerate(classes):
        print(f"| {cname} | {100 * iou[c]:.2f} | {conf[:, c].sum() - conf[c, c]} | {conf[c].sum() - conf[c, c]} |")
    for o, m in shifted.items():
        iou_o = np.diag(m) / np.maximum(m.sum(0) + m.sum(1) - np.diag(m), 1)
        print(f"{a.offset_class} log-probability {o:+g}: mean IU {100 * iou_o.mean():.2f}")


if __name__ == "__main__":
    main()
