"""The paper's setting: one 500x500 image through a trained FCN-8s/VGG16, the default engine
(``--backend auto``: chosen per machine after the task check on the checkpoint's labelled data)
against eager fp32 and eager bf16 (where native), forward latency in interleaved rounds
(medians), plus the first call's cost (the engine check, once per checkpoint and machine).

    PYTHONPATH=. .venv/bin/python benchmarks/paper_setting.py --checkpoint RUN/best.pt [--size 500] [--rounds 5]

The checkpoint must be trained on labelled data present on this machine (the check scores the
int8/bf16 candidates on its validation split; without it only exact engines run). A short
from-scratch FCN-8s/VGG16 run on the Pet images gives one:

    fcnseg train --no-plan --data oxford-pet --data-root ../shared/data/oxford-pet-mini \\
        --model fcn8s --backbone vgg16 --crop 224 224 --batch-size 4 --lr 5e-4 --epochs 1000 \\
        --max-minutes 6 --out runs/vgg-pet

Printed: the engine chosen and its one-line reason, ms per image of each engine, the ratios
to eager fp32, and the CPU (model name and flags).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("FCNSEG_CACHE", tempfile.mkdtemp(prefix="fcnseg-paper-"))  # a first call, not a cached one

    import torch

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.inference import backends as B
    from fcnseg.inference.loader import load_engine, summary
    from fcnseg.precision import cpu_has_fast_bf16, resolve_precision

    ckpt = load_checkpoint(args.checkpoint)
    t = time.perf_counter()
    auto = load_engine(ckpt, "auto")
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        auto(x)  # the check runs on the first call (on the check images), then this size is verified
    first = time.perf_counter() - t
    engines = {"eager fp32": load_engine(ckpt, "torch", "fp32")}
    if cpu_has_fast_bf16():
        engines["eager bf16"] = load_engine(ckpt, "torch", resolve_precision("bf16", torch.device("cpu")))
    engines["default (auto)"] = auto
    with torch.no_grad():
        for run in engines.values():
            run(x)
        times: dict[str, list[float]] = {n: [] for n in engines}
        for _ in range(args.rounds):
            for name, run in engines.items():
                t = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t)
    ms = {n: 1000 * statistics.median(v) for n, v in times.items()}
    evidence = getattr(auto, "evidence", {})
    print(f"cpu: {B.cpu_fingerprint()}")
    print(f"model: {ckpt['model_config'].get('name')}/{ckpt['model_config'].get('backbone')}, input 1x3x{args.size}x{args.size}, {torch.get_num_threads()} threads")
    print(f"first call (engine check, export, calibration, timing): {first:.1f} s")
    print(summary(evidence) if evidence.get("candidates") else f"engine: {evidence}")
    for name, v in ms.items():
        print(f"  {name:<16} {v:8.1f} ms   {ms['eager fp32'] / v:5.2f}x eager fp32")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": B.cpu_fingerprint(), "size": args.size, "ms": ms, "first_call_s": first, "evidence": evidence}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
