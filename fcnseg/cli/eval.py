"""`fcnseg eval`: argument parsing over `fcnseg.evaluate_checkpoint` (in
`fcnseg.inference.evaluate`), which scores a checkpoint on a dataset split at the labels'
original resolution.

Without data flags the checkpoint's own validation data and split are used. A default
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
        "(fcnseg.inference.crf.CRF); 'none' turns off a default saved in the checkpoint",
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
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "compile", "onnxruntime", "openvino"),
        help="inference engine. auto (default): the fastest of torch fp32, onnxruntime and openvino verified "
        "against eager fp32 for this model on this machine (probed once per input size class, cached); without "
        'the export extra (pip install -e ".[export]"), on a GPU or with --precision bf16/fp16 it is torch. '
        "torch runs --precision; compile/onnxruntime/openvino run fp32 (docs/deploy.md)",
    )
    p.add_argument(
        "--onnx", default=None, metavar="FILE",
        help="run this file written by `fcnseg export` (e.g. the int8 one) with --backend onnxruntime or openvino",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_engine_check_args(p)


def add_engine_check_args(p: argparse.ArgumentParser) -> None:
    """The task check of ``--backend auto`` (eval, predict, serve, export --verify)."""
    g = p.add_argument_group(
        "engine check (--backend auto)",
        "bf16 and int8 engines are used only after scoring within these limits of eager fp32 on labelled "
        "images: by default the checkpoint's validation split (docs/deploy.md)",
    )
    g.add_argument("--calib-data", default=None, metavar="NAME", help="dataset to check engines on (default: the checkpoint's)")
    g.add_argument("--calib-root", default=None, metavar="DIR", help="its root folder (default: the checkpoint's, or --data-root)")
    g.add_argument("--calib-split", default=None, metavar="SPLIT", help="its split (default: the checkpoint's validation split)")
    g.add_argument("--max-miou-drop", type=float, default=0.3, metavar="POINTS", help="mean IU an engine may lose (default 0.3)")
    g.add_argument("--max-class-drop", type=float, default=1.0, metavar="POINTS", help="IoU any class may lose (default 1.0)")


def engine_check_kwargs(args: argparse.Namespace) -> dict:
    """``calib_data``, ``calib_root``, ``calib_split``, ``tolerance`` from the flags above."""
    from fcnseg.inference.verify import Tolerance

    root = args.calib_root
    if root is None and args.calib_data is None:
        root = getattr(args, "data_root", None)  # the run's data, moved: eval --data-root
    return {
        "calib_data": args.calib_data,
        "calib_root": root,
        "calib_split": args.calib_split,
        "tolerance": Tolerance(args.max_miou_drop, args.max_class_drop),
    }


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
    from fcnseg.inference.evaluate import evaluate_checkpoint

    batch_size = 1 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0")
    res = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.data_root,
        args.split,
        data_options=dataset_options(args),
        tta="auto" if args.tta is None else args.tta,
        crf="auto" if args.crf is None else args.crf,
        sliding_window=args.sliding_window,
        batch_size=batch_size,
        num_workers=args.workers,
        max_images=args.max_images,
        device=args.device,
        precision=args.precision,
        plots=args.plots,
        progress=sys.stderr.isatty(),
        backend=args.backend,
        onnx_path=args.onnx,
        **engine_check_kwargs(args),
    )
    if args.json:
        print(json.dumps(_clean(res)))
        return 0

    print(
        f"{res['checkpoint']}: {res['data']}/{res['split']}, {res['num_images']} images, "
        f"tta {res['tta'] or 'none'}, crf {res['crf'] or 'none'}, precision {res['precision']}, backend {res['backend']}"
    )
    print(
        f"pixel acc {_pct(res['pixel_acc']).strip()}  mean acc {_pct(res['mean_acc']).strip()}  "
        f"mean IU {_pct(res['mean_iou']).strip()}  f.w. IU {_pct(res['fw_iou']).strip()}  (%)"
    )
    classes = res["classes"]
    width = max([len("class")] + [len(c) for c in classes])
    print(f"{'class':<{width}}     IoU     acc")
    for c in classes:
        pc = res["per_class"][c]
        print(f"{c:<{width}}  {_pct(pc['iou'])}  {_pct(pc['acc'])}")
    print(res["engine"]["summary"])
    for plot in res.get("plots", ()):
        print(f"confusion matrix: {plot}")
    return 0
