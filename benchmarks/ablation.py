"""What each speed choice buys: one model's training step (or inference batch) under
several settings, interleaved round by round in ONE process so that other load on the
machine hits every variant alike.

Each variant is reported as images/s from its fastest step and as images/s estimated from
process CPU time (``threads x images / CPU seconds``: what it would reach with its cores to
itself; spinning OpenMP threads make that a slight underestimate).

    python benchmarks/ablation.py --model seed --freeze-backbone            # training
    python benchmarks/ablation.py --model fcn8s --phase infer --size 500 --batch 1

Training variants: fp32 NCHW + foreach Adam (the plain PyTorch baseline), fp32
channels_last, bf16 NCHW, bf16 channels_last (the default policy), bf16 channels_last
with foreach instead of fused Adam, and optionally bf16 channels_last + torch.compile.
Inference variants: fp32, fp32 channels_last, bf16 autocast, bf16 autocast +
channels_last, bf16 weights (cast once) + channels_last, and optionally torch.compile.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from fcnseg.bench import make_train_step, synthetic_batch
from fcnseg.models import build_model
from fcnseg.precision import Precision

FP32 = Precision("fp32", None, channels_last=False, use_scaler=False)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _model(args: argparse.Namespace, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(args.model, backbone=args.backbone, num_classes=args.num_classes)
    if args.freeze_backbone:
        net.backbone.requires_grad_(False)
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def train_variants(args: argparse.Namespace) -> dict:
    """name -> zero-argument step function."""
    specs = {
        "fp32, NCHW, foreach Adam": ("fp32", False, "foreach", False),
        "fp32, channels_last, fused Adam": ("fp32", True, "fused", False),
        "bf16, NCHW, fused Adam": ("bf16", False, "fused", False),
        "bf16, channels_last, foreach Adam": ("bf16", True, "foreach", False),
        "bf16, channels_last, fused Adam (default)": ("bf16", True, "fused", False),
    }
    if args.compile:
        specs["bf16, channels_last, fused Adam, torch.compile"] = ("bf16", True, "fused", True)
    steps = {}
    for name, (prec_name, cl, adam, compiled) in specs.items():
        prec = Precision(prec_name, torch.bfloat16 if prec_name == "bf16" else None, cl, False)
        net = _model(args, cl).train()
        if args.freeze_backbone:
            net.backbone.eval()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4, **{adam: True})
        runner = torch.compile(net) if compiled else net
        step = make_train_step(runner, opt, prec, torch.device("cpu"))
        x, y = synthetic_batch(
            args.batch, 3, (args.size, args.size), args.num_classes, torch.device("cpu"), cl
        )
        steps[name] = lambda step=step, x=x, y=y: step(x, y)
    return steps


def infer_variants(args: argparse.Namespace) -> dict:
    specs = {
        "fp32, NCHW": (None, False, False, False),
        "fp32, channels_last": (None, True, False, False),
        "bf16 autocast, NCHW": (torch.bfloat16, False, False, False),
        "bf16 autocast, channels_last (default)": (torch.bfloat16, True, False, False),
        "bf16 weights cast once, channels_last": (torch.bfloat16, True, True, False),
    }
    if args.compile:
        specs["bf16 autocast, channels_last, torch.compile"] = (torch.bfloat16, True, False, True)
    fns = {}
    for name, (dtype, cl, cast, compiled) in specs.items():
        net = _model(args, cl).eval()
        if cast:
            net = net.to(dtype)
        runner = torch.compile(net) if compiled else net
        x, _ = synthetic_batch(
            args.batch, 3, (args.size, args.size), args.num_classes, torch.device("cpu"), cl
        )
        if cast:
            x = x.to(dtype)

        def fn(runner=runner, x=x, dtype=dtype):
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
            ):
                runner(x)

        fns[name] = fn
    return fns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--phase", choices=("train", "infer"), default="train")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (1: per-core figures that CPU time measures well on a busy machine)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fns = train_variants(args) if args.phase == "train" else infer_variants(args)
    for name, fn in fns.items():  # warm-up (and compile) outside the timed rounds
        t0 = time.perf_counter()
        fn()
        fn()
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    wall = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            c0, t0 = _cpu(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
    n = torch.get_num_threads()
    rows = []
    for name in fns:
        rows.append(
            {
                "variant": name,
                "img_s_best": args.batch / min(wall[name]),
                "img_s_cpu": n * args.batch / min(cpu[name]),
                "cpu_share": sum(cpu[name]) / (n * sum(wall[name])),
            }
        )
    base = rows[0]["img_s_cpu"]
    if args.json:
        print(json.dumps({"config": vars(args), "rows": rows}))
        return 0
    print(
        f"{args.phase}: {args.model}/{args.backbone}{' (backbone frozen)' if args.freeze_backbone else ''}, "
        f"batch {args.batch} x {args.size}x{args.size}, {n} threads, best of {args.rounds} rounds\n"
    )
    print("| variant | img/s (fastest) | img/s from CPU time | vs first row | CPU share |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['img_s_best']:.2f} | {r['img_s_cpu']:.2f} "
            f"| {r['img_s_cpu'] / base:.2f}x | {r['cpu_share']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
