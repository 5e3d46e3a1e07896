"""`fcnseg eval`: score a checkpoint on a dataset split at the labels' original resolution.

Without data flags the checkpoint's own validation data (config `val_data*` if the run
validated on another dataset, else `data`, `data_root`, `data_options`) and validation
split (config `val_split`, default "val") are used. A default
test-time augmentation saved in the checkpoint's config (`eval_tta`) applies unless
`--tta none` is given, and so does a CRF (`eval_crf`) unless `--crf none` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from fcnseg.cli.data import add_data_args, dataset_options
from fcnseg.errors import ConfigError


def add_inference_args(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """Flags shared by eval and predict (``batch_size``: the verb's default, for the help)."""
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt file written by `fcnseg train`")
    p.add_argument(
        "--tta",
        default=None,
        metavar="SPEC",
        help="test-time augmentation, e.g. 'flip', 'scales=0.75,1,1.25', 'flip,scales=0.75,1,1.25' "
        "(softmax probabilities averaged); 'none' turns off a default saved in the checkpoint",
    )
    p.add_argument(
        "--crf",
        default=None,
        metavar="SPEC",
        help="refine the probabilities with a local dense CRF (mean-field, Potts, appearance kernel over "
        "position and colour): 'default' or key=value pairs, e.g. 'appearance=2,theta_b=5' "
        "(fcnseg.engine.crf.CRF); 'none' turns off a default saved in the checkpoint",
    )
    p.add_argument(
        "--sliding-window",
        default=None,
        metavar="SIZE",
        help="run large images in overlapping tiles of SIZE or HxW pixels (stride 2/3 of the tile)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, metavar="B",
        help=f"images per forward pass (default {batch_size}); only images of one size share a pass (never padded), so scores do not depend on it",
    )
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def checkpoint_inference(args: argparse.Namespace, ckpt: dict):
    """(tta, crf) to use: `--tta` / `--crf` if given ('none' = off), else the checkpoint
    config's `eval_tta` / `eval_crf`."""
    from fcnseg.engine.crf import parse_crf
    from fcnseg.engine.inference import parse_tta

    config = ckpt.get("config") or {}
    chosen = []
    for flag, key, parse in (("--tta", "eval_tta", parse_tta), ("--crf", "eval_crf", parse_crf)):
        arg = getattr(args, flag[2:])
        if arg is not None:
            chosen.append(parse(arg))
            continue
        try:
            chosen.append(parse(config.get(key)))
        except ConfigError as e:
            raise ConfigError(f"checkpoint config {key}: {e}; override it with {flag}") from None
    return tuple(chosen)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint: pixel acc, mean acc, mean IU, f.w. IU, per-class table",
        description="Score a checkpoint on a dataset split. Labels are scored at their "
        "original resolution (logits are resized to the label, never the label to the image). "
        "Default data: the checkpoint's dataset and validation split.",
    )
    add_inference_args(p, batch_size=1)
    add_data_args(p, required=False)
    p.add_argument("--split", default=None, help="split to score (default: the checkpoint's val split)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    p.add_argument("--plots", default=None, metavar="DIR", help="write a row-normalised confusion matrix PNG here")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data loader workers (default 0)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="score the first N images only")
    p.set_defaults(func=run)


def _dataset_spec(args: argparse.Namespace, config: dict) -> tuple[str, str | None, dict, str]:
    """(name, root, options, split): flags first, then the checkpoint's validation data
    (config `val_data`/`val_data_root`/`val_data_options` when the run validated on another
    dataset, else `data`/`data_root`/`data_options`) and `val_split`."""
    if config.get("val_data"):
        ck_data, ck_root, ck_options = (
            config["val_data"], config.get("val_data_root"), config.get("val_data_options")
        )
    else:
        ck_data, ck_root, ck_options = (
            config.get("data"), config.get("data_root"), config.get("data_options")
        )
    same = args.data is None or args.data == ck_data
    name = args.data or ck_data
    if not name:
        raise ConfigError("the checkpoint records no dataset; pass --data NAME (and --data-root DIR)")
    root = args.data_root if args.data_root is not None else (ck_root if same else None)
    options = dict(ck_options or {}) if same else {}
    options.update(dataset_options(args))
    split = args.split or config.get("val_split") or "val"
    return name, root, options, split


def _pct(v: float) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def _clean(v):
    """NaN → None, recursively, so the JSON is strict."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def run(args: argparse.Namespace) -> int:
    import torch

    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.engine.evaluate import evaluate
    from fcnseg.engine.inference import parse_window
    from fcnseg.engine.precision import resolve_device, resolve_precision

    batch_size = 1 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0")
    window = parse_window(args.sliding_window)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)

    ckpt = load_checkpoint(args.checkpoint)
    tta, crf = checkpoint_inference(args, ckpt)
    config = ckpt.get("config") or {}
    name, root, options, split = _dataset_spec(args, config)
    mean, std = ckpt.get("mean"), ckpt.get("std")
    if mean is None or std is None:
        from fcnseg.weights import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD
    dataset = build_dataset(
        name, root=root, split=split, transforms=eval_transforms(mean=mean, std=std), **options
    )
    k_model = int(ckpt["model_config"].get("num_classes", 0))
    if k_model != dataset.num_classes:
        raise ConfigError(
            f"checkpoint {args.checkpoint} predicts {k_model} classes but dataset {name!r} has "
            f"{dataset.num_classes}; evaluate on the dataset it was trained for (or the same "
            "--data-option settings)"
        )
    ck_classes = list(ckpt.get("classes") or [])
    if ck_classes and ck_classes != list(dataset.classes):
        print(
            f"fcnseg eval: warning: class names differ between checkpoint ({', '.join(ck_classes)}) "
            f"and dataset ({', '.join(dataset.classes)})",
            file=sys.stderr,
        )
    model = model_from_checkpoint(ckpt).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)

    res = evaluate(
        model,
        dataset,
        device=device,
        precision=precision,
        batch_size=batch_size,
        tta=tta,
        sliding_window=window,
        num_workers=args.workers,
        max_images=args.max_images,
        progress=sys.stderr.isatty(),
        mean=mean,
        std=std,
        crf=crf,
    )
    classes = list(dataset.classes)
    plot = None
    if args.plots:
        plot = plot_confusion(res["confusion"], classes, args.plots)

    if args.json:
        out = {
            "checkpoint": str(args.checkpoint),
            "data": name,
            "split": split,
            "num_images": res["num_images"],
            "tta": str(tta) if tta is not None else None,
            "crf": str(crf) if crf is not None else None,
            "sliding_window": list(window) if window else None,
            "precision": precision.name,
            "pixel_acc": res["pixel_acc"],
            "mean_acc": res["mean_acc"],
            "mean_iou": res["mean_iou"],
            "fw_iou": res["fw_iou"],
            "per_class": res["per_class"],
            "classes": classes,
            "confusion": res["confusion"],
        }
        if plot is not None:
            out["plots"] = [str(plot)]
        print(json.dumps(_clean(out)))
        return 0

    print(
        f"{args.checkpoint}: {name}/{split}, {res['num_images']} images, "
        f"tta {tta if tta is not None else 'none'}, crf {crf if crf is not None else 'none'}, "
        f"precision {precision.name}"
    )
    print(
        f"pixel acc {_pct(res['pixel_acc']).strip()}  mean acc {_pct(res['mean_acc']).strip()}  "
        f"mean IU {_pct(res['mean_iou']).strip()}  f.w. IU {_pct(res['fw_iou']).strip()}  (%)"
    )
    width = max([len("class")] + [len(c) for c in classes])
    print(f"{'class':<{width}}     IoU     acc")
    for c in classes:
        pc = res["per_class"][c]
        print(f"{c:<{width}}  {_pct(pc['iou'])}  {_pct(pc['acc'])}")
    if plot is not None:
        print(f"confusion matrix: {plot}")
    return 0


def plot_confusion(confusion: list[list[int]], classes: list[str], out_dir):
    """Writes `confusion.png` in `out_dir`: rows (truth) normalised to sum 1, class names on
    both axes. Returns the path."""
    from pathlib import Path

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    side = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (rows normalised)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if m[i, j] > 0:
                    ax.text(
                        j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "confusion.png"
    fig.savefig(path, format="png")
    return path
