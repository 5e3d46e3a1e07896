"""`fcnseg export`: write a checkpoint's model as ONNX, checked against PyTorch before it is
written (fcnseg.export); with --int8 quantized on training images."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch/size, metadata), verified against PyTorch",
        description="Export a checkpoint's model to ONNX with dynamic batch, height and width and the "
        "classes, palette and preprocessing in its metadata. Before anything is written, onnxruntime's "
        "logits are compared with PyTorch fp32 at 97x131, 360x480 and 512x512 (max|Δlogit| <= 1e-4 x "
        "max|logit|, argmax >= 99.99 %); a failed check is an error and writes nothing.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt file written by `fcnseg train`")
    p.add_argument("--format", default="onnx", metavar="FORMAT", help="onnx (the only one; docs/deploy.md says why no torch-native format)")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset, 17-23 (default: fcnseg.export.DEFAULT_OPSET, 18)")
    p.add_argument("--out", default=None, metavar="FILE", help="output file (default: the checkpoint's name, .onnx / .int8.onnx)")
    p.add_argument(
        "--int8", action="store_true",
        help="also quantize to int8 (static, per-channel; onnxruntime): writes --out and the verified fp32 file beside it as NAME.fp32.onnx",
    )
    p.add_argument("--calib-data", default=None, metavar="NAME", help="dataset whose train split calibrates --int8 and whose --calib-split checks it (default: the checkpoint's own data)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="that dataset's root folder (default: the checkpoint's)")
    p.add_argument("--calib-split", default=None, metavar="SPLIT", help="split the int8 model is scored on against fp32 (default: the checkpoint's validation split)")
    p.add_argument("--calib-images", type=int, default=100, metavar="N", help="training images to calibrate on (default 100)")
    p.add_argument("--max-miou-drop", type=float, default=0.3, metavar="POINTS", help="mean IU int8 may lose against fp32 (default 0.3)")
    p.add_argument("--max-class-drop", type=float, default=1.0, metavar="POINTS", help="IoU any class may lose (default 1.0)")
    p.add_argument("--verify", action="store_true", help="also run --backend auto's engine check now (export, task check, timing; cached for eval/predict/serve on this machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.checkpoint import _os_error, write_error
    from fcnseg.export import DEFAULT_OPSET, export
    from fcnseg.inference.verify import Tolerance

    try:
        res = export(
            args.checkpoint,
            format=args.format,
            out=args.out,
            opset=DEFAULT_OPSET if args.opset is None else args.opset,
            int8=args.int8,
            calib_data=args.calib_data,
            data_root=args.data_root,
            calib_split=args.calib_split,
            calib_images=args.calib_images,
            tolerance=Tolerance(args.max_miou_drop, args.max_class_drop),
        )
    except (OSError, RuntimeError) as e:  # torch.onnx reports a failed write as a RuntimeError
        os_error = _os_error(e)
        if os_error is None:
            raise
        out = args.out or Path(args.checkpoint).with_suffix(".onnx")
        if str(os_error.filename or "").endswith(".onnx"):  # e.g. the int8 run's NAME.fp32.onnx
            out = os_error.filename
        raise write_error(out, os_error, what="ONNX file", fix="or pass another --out") from None
    import json

    card = json.loads(res.card.read_text())
    if args.verify:  # auto's engine check now, cached for eval/predict/serve on this machine
        from fcnseg.export import write_card
        from fcnseg.inference.loader import engine_evidence, load_engine

        engine = load_engine(
            args.checkpoint, "auto", "auto", "cpu", data=args.calib_data, data_root=args.data_root,
            split=args.calib_split, tolerance=Tolerance(args.max_miou_drop, args.max_class_drop),
        )
        card["engine"] = engine_evidence(engine)
        write_card(res.path, {k: v for k, v in card.items() if k not in ("fcnseg", "written", "machine", "versions")})
    if args.int8:
        check = card["task_check"]
        last = check["tries"][-1]
        on = check["checked_on"]
        print(
            f"wrote {res.path} (int8, {len(last['fp32_layers'])} layers kept fp32): mean IU {last['mean_iou']:.2f} vs "
            f"{check['reference_mean_iou']:.2f} fp32 ({last['miou_delta']:+.2f}) on {on['data']}/{on['split']} "
            f"({on['images']} images), worst class {last['worst_class']} {last['worst_class_delta']:+.2f}"
        )
    else:
        print(res.summary())
    if "engine" in card:
        print(card["engine"]["summary"])
    print(f"model card: {res.card}")
    return 0
