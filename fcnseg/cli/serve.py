"""`fcnseg serve`: the HTTP API and web page of a checkpoint (fcnseg.serve), over uvicorn."""

from __future__ import annotations

import argparse

from fcnseg.cli.eval import add_engine_check_args, engine_check_kwargs
from fcnseg.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP: an API (/v1/segment) and a web page (/)",
        description="Serve a checkpoint: POST /v1/segment (mask PNG, JSON or overlay), GET /v1/model, "
        "/healthz, /readyz, the OpenAPI spec at /openapi.json and a web page at /. "
        'Needs the serving extra: pip install -e ".[serve]".',
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt file written by `fcnseg train`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "torch", "compile", "onnxruntime", "openvino"),
        help="inference engine, as in `fcnseg predict` (default auto: the fastest verified for this model on this "
        'machine, torch without the export extra; torch runs --precision, the others fp32)',
    )
    p.add_argument("--onnx", default=None, metavar="FILE", help="run this file written by `fcnseg export` with --backend onnxruntime or openvino")
    p.add_argument("--tta", default=None, metavar="SPEC", help="test-time augmentation as in `fcnseg predict` (default: the checkpoint's; 'none' turns it off)")
    p.add_argument("--crf", default=None, metavar="SPEC", help="CRF refinement as in `fcnseg predict` (default: the checkpoint's; 'none' turns it off)")
    p.add_argument("--sliding-window", default=None, metavar="SIZE", help="run large images in overlapping tiles of SIZE or HxW pixels")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N", help="refuse larger images with 413 before decoding them (default 16777216 = 4096x4096)")
    p.add_argument("--max-upload-mb", type=float, default=None, metavar="M", help="refuse larger uploads with 413 (default 20)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="images in inference at once (default 1)")
    p.add_argument("--max-queue", type=int, default=8, metavar="N", help="requests waiting for a worker; beyond them 503 with Retry-After (default 8)")
    add_engine_check_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ConfigError('fcnseg serve needs the serving extra; install it with: pip install -e ".[serve]"') from None
    from fcnseg.serve.app import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB, create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be in 0..65535")
    app = create_app(
        args.checkpoint,
        tta="auto" if args.tta is None else args.tta,
        crf="auto" if args.crf is None else args.crf,
        sliding_window=args.sliding_window,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        onnx_path=args.onnx,
        max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels,
        max_upload_mb=DEFAULT_MAX_UPLOAD_MB if args.max_upload_mb is None else args.max_upload_mb,
        workers=args.workers,
        max_queue=args.max_queue,
        **engine_check_kwargs(args),
    )
    print(f"fcnseg serve: http://{args.host}:{args.port}/ (API docs at /docs; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
