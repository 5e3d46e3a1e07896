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
    p.add_argument("--calib-data", default=None, metavar="NAME", help="dataset whose train split calibrates --int8 (e.g. camvid)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="the calibration dataset's root folder")
    p.add_argument("--calib-images", type=int, default=100, metavar="N", help="training images to calibrate on (default 100)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.engine.checkpoint import _os_error, write_error
    from fcnseg.export import DEFAULT_OPSET, export

    try:
        res = export(
            args.checkpoint,
            format=args.format,
            out=args.out,
            opset=DEFAULT_OPSET if args.opset is None else args.opset,
            int8=args.int8,
            calib_data=args.calib_data,
            data_root=args.data_root,
            calib_images=args.calib_images,
        )
    except (OSError, RuntimeError) as e:  # torch.onnx reports a failed write as a RuntimeError
        os_error = _os_error(e)
        if os_error is None:
            raise
        out = args.out or Path(args.checkpoint).with_suffix(".onnx")
        if str(os_error.filename or "").endswith(".onnx"):  # e.g. the int8 run's NAME.fp32.onnx
            out = os_error.filename
        raise write_error(out, os_error, what="ONNX file", fix="or pass another --out") from None
    if args.int8:
        agree = min((p.agreement for p in res.parity), default=float("nan"))
        print(f"wrote {res.path} (int8; argmax agreement with PyTorch fp32 on calibration images {100 * agree:.2f} %; "
              "score it with `fcnseg eval --backend onnxruntime --onnx FILE`)")
    else:
        print(res.summary())
    return 0
