"""`fcnseg bench`: training / inference speed, peak memory and FLOPs of a model."""

from __future__ import annotations

import argparse
import json
import math

from fcnseg.cli.data import add_data_args, dataset_options
from fcnseg.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time training steps and inference on synthetic (or real) batches",
        description="Warm up, then time training steps (forward + loss + backward + Adam) and "
        "inference batches; report images/s, ms per step, peak memory, FLOPs per image and "
        "achieved TFLOP/s against the measured matmul peak.",
    )
    p.add_argument("--model", default="fcn8s", help="model name (fcn32s, fcn16s, fcn8s, fcn4s, seed)")
    p.add_argument("--backbone", default="vgg16", help="backbone name (vgg16, resnet18, ...)")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[224],
        metavar="H [W]",
        help="input height and width (one value: square)",
    )
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per phase")
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the head only (the tutorial freezes its VGG trunk)",
    )
    p.add_argument("--only", choices=("train", "infer"), help="run only one phase")
    p.add_argument("--upsample", choices=("deconv", "bilinear", "unpool"), default=None)
    p.add_argument("--align", default=None, help="model crop/align policy (e.g. same, caffe)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    p.add_argument("--peak-n", type=int, default=4096, help="matmul size for the peak")
    add_data_args(p, required=False)  # --data: also time the real loader of that dataset
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for --data")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="also write a torch.profiler table of training steps to FILE",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1e6:
            return f"{v:.4g}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    import torch

    from fcnseg.bench import benchmark

    if len(args.size) > 2:
        raise ConfigError(f"--size takes H or H W, got {len(args.size)} values")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    options = {k: v for k, v in (("upsample", args.upsample), ("align", args.align)) if v}
    phases = (args.only,) if args.only else ("infer", "train")
    result = benchmark(
        args.model,
        backbone=args.backbone,
        size=tuple(args.size),
        batch=args.batch,
        precision=args.precision,
        compile=args.compile,
        device=args.device,
        num_classes=args.num_classes,
        steps=args.steps,
        warmup=args.warmup,
        freeze_backbone=args.freeze_backbone,
        phases=phases,
        flops=not args.no_flops,
        peak=not args.no_peak,
        peak_n=args.peak_n,
        model_options=options or None,
        data=args.data,
        data_root=args.data_root,
        data_options=dataset_options(args),
        workers=args.workers,
    )
    if args.profile:
        result["profile"] = _profile(args, options)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {_fmt(v)}")
    return 0


def _profile(args: argparse.Namespace, options: dict) -> str:
    from pathlib import Path

    import torch

    from fcnseg.bench import profile_train_step, synthetic_batch
    from fcnseg.models import build_model
    from fcnseg.precision import resolve_device, resolve_precision

    dev = resolve_device(args.device)
    prec = resolve_precision(args.precision, dev)
    net = build_model(args.model, backbone=args.backbone, num_classes=args.num_classes, **options)
    if args.freeze_backbone:
        net.backbone.requires_grad_(False)
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    net = net.to(dev, memory_format=fmt)
    size = (args.size[0], args.size[-1])
    x, y = synthetic_batch(args.batch, 3, size, args.num_classes, dev, prec.channels_last)
    table = profile_train_step(torch.compile(net) if args.compile else net, x, y, prec, dev)
    Path(args.profile).write_text(table)
    return str(args.profile)
