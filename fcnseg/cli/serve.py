"""`fcnseg serve`: the HTTP API and web page of a checkpoint (fcnseg.serve), over uvicorn."""

from __future__ import annotations

import argparse
import os

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
    p.add_argument("--max-inference-pixels", type=int, default=None, metavar="N", help="refuse images whose pixels x TTA views exceed N with 413 (default 4194304 = 2048x2048 at one view)")
    p.add_argument("--max-connections", type=int, default=512, metavar="N", help="open connections; requests beyond them get 503 (default 512)")
    p.add_argument("--read-timeout", type=float, default=None, metavar="S", help="seconds a request body may take to arrive, then 408 (default 30; headers: 10)")
    p.add_argument("--token", default=None, metavar="TOKEN", help="require 'Authorization: Bearer TOKEN' on /v1/* and /metrics (default: $FCNSEG_TOKEN; prefer the variable, a flag shows in ps)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host without a token (anyone who reaches the port can use the API)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a Host header to serve besides localhost/127.0.0.1/::1 (repeatable; '*': any), e.g. the machine's DNS name")
    add_engine_check_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401  (the serving extra is installed)
    except ModuleNotFoundError:
        raise ConfigError('fcnseg serve needs the serving extra; install it with: pip install -e ".[serve]"') from None
    from fcnseg.serve.app import (
        DEFAULT_MAX_IMAGE_PIXELS,
        DEFAULT_MAX_INFERENCE_PIXELS,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_READ_TIMEOUT,
        LOOPBACK_HOSTS,
        create_app,
    )

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be in 0..65535")
    if args.max_connections < 1:
        raise ConfigError(f"--max-connections {args.max_connections}: must be >= 1")
    token = args.token or os.environ.get("FCNSEG_TOKEN") or None
    if not _loopback(args.host) and token is None and not args.no_auth:
        raise ConfigError(
            f"--host {args.host} lets other machines reach the API, and no token is set: set FCNSEG_TOKEN "
            "(clients send 'Authorization: Bearer TOKEN'), or pass --no-auth to serve it open"
        )
    allowed = [*LOOPBACK_HOSTS, *args.allowed_host]
    if not _loopback(args.host) and args.host not in ("0.0.0.0", "::"):
        allowed.append(args.host)
    from fcnseg.serve.server import listen
    from fcnseg.serve.server import run as serve

    listen(args.host, args.port).close()  # a taken port is one line now, not after loading the model
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
        max_inference_pixels=DEFAULT_MAX_INFERENCE_PIXELS if args.max_inference_pixels is None else args.max_inference_pixels,
        read_timeout=DEFAULT_READ_TIMEOUT if args.read_timeout is None else args.read_timeout,
        token=token,
        allowed_hosts=allowed,
        **engine_check_kwargs(args),
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    auth = "; the API needs the token (the page asks for it once)" if token else ""
    print(f"fcnseg serve: http://{shown}:{args.port}/ (API docs at /docs; Ctrl-C or SIGTERM drains and stops){auth}", flush=True)
    serve(app, host=args.host, port=args.port, max_connections=args.max_connections)
    return 0


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
