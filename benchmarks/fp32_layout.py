"""fp32 memory layout on the CPU: NCHW (contiguous) against channels_last (NHWC), for the
shipped models, so that ``--precision auto`` takes the faster one where the CPU has no
native bf16 (fcnseg.precision).

Workloads: ResNet-18 FCN-8s (the zero-argument model) and FCN-4s (configs/camvid.yaml),
bilinear upsampling, 11 classes: inference at 1x360x480 and 8x360x480 (a CamVid frame, no
autograd), and the training step (forward, cross-entropy, backward, AdamW: the benchmark's
``make_train_step``) at batch 8 on 288x384 and 144x192 crops (the CamVid recipe's two
stages). The two layouts run interleaved round by round in one process (the order flips each
round), so other load on the machine hits both alike; the figure is the ratio of the median
seconds per call, NCHW / channels_last (> 1: channels_last is faster).

    python benchmarks/fp32_layout.py                 # all workloads, 5 rounds
    python benchmarks/fp32_layout.py --rounds 3 --only infer --threads 2

On a CPU with native bf16 this measures the fp32 path that ``--precision fp32`` takes (the
stand-in for an fp32-only CPU); the CPU's name and flags are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fcnseg.bench import cpu_name, make_optimizer, make_train_step
from fcnseg.models import build_model
from fcnseg.precision import Precision, cpu_features

FP32 = Precision("fp32", None, channels_last=False, use_scaler=False)
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}

WORKLOADS = [  # (phase, model, batch, (H, W))
    ("infer", "fcn8s", 1, (360, 480)),
    ("infer", "fcn8s", 8, (360, 480)),
    ("infer", "fcn4s", 1, (360, 480)),
    ("infer", "fcn4s", 8, (360, 480)),
    ("train", "fcn8s", 8, (288, 384)),
    ("train", "fcn8s", 8, (144, 192)),
    ("train", "fcn4s", 8, (288, 384)),
    ("train", "fcn4s", 8, (144, 192)),
]


def _call(phase: str, model_name: str, batch: int, size: tuple[int, int], fmt) -> callable:
    """A zero-argument function running one call of the workload in layout ``fmt``."""
    torch.manual_seed(0)
    net = build_model(model_name, backbone="resnet18", num_classes=11, upsample="bilinear").to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=g).contiguous(memory_format=fmt)
    if phase == "infer":
        net.eval()

        def infer():
            with torch.inference_mode():
                return F.softmax(net(x), 1).argmax(1)

        return infer
    y = torch.randint(0, 11, (batch, *size), generator=g)
    step = make_train_step(net.train(), make_optimizer(net.parameters(), 1e-3, torch.device("cpu")), FP32, torch.device("cpu"))
    return lambda: step(x, y).item()


def measure(workload: tuple, rounds: int, calls: int) -> dict:
    phase, model_name, batch, size = workload
    fns = {name: _call(phase, model_name, batch, size, fmt) for name, fmt in LAYOUTS.items()}
    for fn in fns.values():  # warm-up: first-call allocations and oneDNN primitive creation
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in order:
            for _ in range(calls):
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "phase": phase, "model": f"{model_name}/resnet18", "batch": batch, "size": f"{size[0]}x{size[1]}",
        "NCHW_s": round(med["NCHW"], 4), "channels_last_s": round(med["channels_last"], 4),
        "ratio_nchw_over_cl": round(med["NCHW"] / med["channels_last"], 3), "calls": len(times["NCHW"]),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=2, help="calls per layout per round")
    p.add_argument("--only", choices=("infer", "train"), default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(w, args.rounds, args.calls) for w in WORKLOADS if args.only in (None, w[0])]
    head = {"cpu": cpu_name(), "features": cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({**head, "rows": rows}))
        return 0
    print(f"{head['cpu']}; flags seen: {', '.join(head['features']) or 'none'}; {head['threads']} threads; torch {head['torch']}")
    print(f"{'phase':6s} {'model':16s} {'batch':>5s} {'size':>8s} {'NCHW s':>8s} {'CL s':>8s} {'NCHW/CL':>8s}")
    for r in rows:
        print(f"{r['phase']:6s} {r['model']:16s} {r['batch']:5d} {r['size']:>8s} {r['NCHW_s']:8.3f} {r['channels_last_s']:8.3f} {r['ratio_nchw_over_cl']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
