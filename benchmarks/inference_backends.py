"""Inference engines side by side: eager fp32 (NCHW, channels_last), bf16 where the CPU has it,
torch.compile with freezing, onnxruntime, OpenVINO, fcnseg's `auto` backend (and an int8 ONNX
file when given), timed in ONE process with interleaved rounds (each round runs every engine
once, in turn), medians reported.

    PYTHONPATH=. .venv/bin/python benchmarks/inference_backends.py [--rounds 3] [--cases all]
        [--checkpoint RUN/best.pt] [--int8 RUN/model.int8.onnx] [--json out.json]

Cases: FCN-8s/ResNet-18 at 360x480 (batch 1 and 8), the CamVid recipe's model (FCN-4s/ResNet-18,
bilinear, 360x480; ``--checkpoint`` uses a trained one, and ``--int8`` adds its quantized file),
FCN-8s/VGG16 at 500x500. Random weights otherwise (speed does not depend on them). Every engine's
logits are compared with eager fp32 on the benchmark input (max|Δ| relative to max|logit|, argmax
agreement). Columns: ms per image, images/s, speed-up over eager fp32, peak RSS during the
engine's calls (process high-water mark, reset before each; weights of all engines stay loaded,
so it includes them), and the fraction of the machine's measured matmul peak (fp32, or bf16 for
the bf16 column) that the forward's counted FLOPs reach: the peak is
``fcnseg.bench.matmul_peak_tflops`` (best of three 4096^3 GEMMs in torch, same threads, measured
once), FLOPs are ``fcnseg.bench.count_flops`` (a multiply-add is 2; convolutions, transposed
convolutions, matmuls). The CPU (model and flags) and thread
count are printed first.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fcnseg.bench import PeakMemory, count_flops, matmul_peak_tflops
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.export import compare, parity_inputs, switch_flips_allowed
from fcnseg.inference import backends as B
from fcnseg.inference.loader import load_engine
from fcnseg.models import build_model
from fcnseg.precision import Precision, cpu_has_fast_bf16, resolve_precision

CASES = {
    "fcn8s-r18-b1": ("fcn8s", "resnet18", "deconv", 1, (360, 480)),
    "fcn8s-r18-b8": ("fcn8s", "resnet18", "deconv", 8, (360, 480)),
    "recipe": ("fcn4s", "resnet18", "bilinear", 1, (360, 480)),
    "fcn8s-vgg16": ("fcn8s", "vgg16", "deconv", 1, (500, 500)),
}


def _model(case: str, args) -> tuple[torch.nn.Module, dict]:
    name, backbone, upsample, _, _ = CASES[case]
    if case == "recipe" and args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        return model_from_checkpoint(ckpt).eval(), ckpt
    torch.manual_seed(0)
    model = build_model(name, backbone=backbone, num_classes=11, upsample=upsample).eval()
    with torch.no_grad():  # score layers start at zero; random ones make the logits vary
        for n, p in model.named_parameters():
            if n.startswith("score") and p.dim() > 1:
                p.normal_(0, 0.01)
    return model, {"model": model.state_dict(), "model_config": model.config}


def _engines(model, ckpt, case: str, args) -> dict:
    cpu = torch.device("cpu")
    out = {
        "eager fp32": B.TorchBackend(model, resolve_precision("fp32", cpu), cpu),
        "eager fp32 channels_last": B.TorchBackend(model, Precision("fp32", None, channels_last=True, use_scaler=False), cpu),
    }
    if cpu_has_fast_bf16():
        out["eager bf16 channels_last"] = B.TorchBackend(model, resolve_precision("bf16", cpu), cpu)
    out["compile (freezing)"] = B.CompileBackend(model, cpu)
    if B.installed("onnxruntime"):
        out["onnxruntime"] = load_engine(model, "onnxruntime")
    if B.installed("openvino"):
        out["openvino"] = load_engine(model, "openvino")
    # with the checkpoint, auto runs its task check on the run's validation data (if it is here)
    out["auto"] = load_engine(ckpt if case == "recipe" and args.checkpoint else model, "auto")
    if case == "recipe" and args.int8:
        out["onnxruntime int8"] = B.OnnxRuntimeBackend(args.int8)
        if B.installed("openvino"):
            out["openvino int8"] = B.OpenVinoBackend(args.int8)
    return model, out


def run_case(case: str, args) -> list[dict]:
    _, _, _, batch, (h, w) = CASES[case]
    model, ckpt = _model(case, args)
    model, engines = _engines(model, ckpt, case, args)
    x = parity_inputs([(h, w)])[0].repeat(batch, 1, 1, 1)
    flops = count_flops(model, tuple(x.shape))
    with torch.no_grad():
        ref = model(x)
    rows = {}
    for name, run in engines.items():  # warm-up (compiles, auto's probe) and parity, untimed
        t = time.perf_counter()
        p = compare(ref, run(x), switch_flips_allowed(model))
        rows[name] = {"times": [], "rss": float("nan"), "parity": p, "first_s": time.perf_counter() - t}
        print(f"  {case}: {name} ready ({rows[name]['first_s']:.1f} s first call; {p})", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        for name, run in engines.items():
            gc.collect()
            with PeakMemory(torch.device("cpu")) as mem:
                t = time.perf_counter()
                run(x)
                rows[name]["times"].append(time.perf_counter() - t)
            rows[name]["rss"] = max(mem.mb, rows[name]["rss"]) if rows[name]["rss"] == rows[name]["rss"] else mem.mb
        print(f"  {case}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    base = statistics.median(rows["eager fp32"]["times"])
    peak_fp32 = matmul_peak_tflops(torch.float32)  # measured once per process (fcnseg.bench)
    peak_bf16 = matmul_peak_tflops(torch.bfloat16) if cpu_has_fast_bf16() else float("nan")
    print(f"  {case}: matmul peak fp32 {peak_fp32:.3f}, bf16 {peak_bf16:.3f} TFLOP/s; forward {flops / 1e9:.1f} GFLOP", file=sys.stderr)
    out = []
    for name, row in rows.items():
        med = statistics.median(row["times"])
        peak = peak_bf16 if "bf16" in name else peak_fp32
        chosen = ""
        if name == "auto":
            chosen = ", ".join(sorted({e["backend"] for e in engines["auto"].report.values()}))
        out.append(
            {
                "case": case,
                "engine": name + (f" -> {chosen}" if chosen else ""),
                "batch": batch,
                "size": f"{h}x{w}",
                "ms_per_image": 1000 * med / batch,
                "images_per_s": batch / med,
                "speedup": base / med,
                "peak_rss_mb": row["rss"],
                "peak_fraction": flops / med / 1e12 / peak,
                "matmul_peak_tflops": peak,
                "rel_diff": row["parity"].rel,
                "agreement": row["parity"].agreement,
            }
        )
    del engines, model
    gc.collect()
    return out


def cpu_name() -> tuple[str, str]:
    name, flags = "?", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "?":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            keep = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
            flags = " ".join(f for f in keep if f in line.split(":", 1)[1].split())
    return name, flags


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="all", help=f"comma-separated, of {', '.join(CASES)} (default all)")
    ap.add_argument("--checkpoint", default=None, help="a trained CamVid recipe checkpoint for the 'recipe' case")
    ap.add_argument("--int8", default=None, help="its int8 ONNX file (fcnseg export --int8)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    cases = list(CASES) if args.cases == "all" else args.cases.split(",")
    name, flags = cpu_name()
    print(f"CPU: {name} ({flags}); {torch.get_num_threads()} threads; {B.versions()}")
    print(f"{args.rounds} interleaved rounds, medians; matmul peak measured once (fcnseg.bench)")
    rows = []
    for case in cases:
        rows += run_case(case, args)
    print()
    print("| case | engine | ms/image | images/s | vs eager fp32 | peak RSS (MiB) | of matmul peak (TFLOP/s) | max|Δ|/max|logit| | argmax agree |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        _, bb, _, batch, _ = CASES[r["case"]]
        print(
            f"| {r['case']} ({r['batch']}x{r['size']}) | {r['engine']} | {r['ms_per_image']:.0f} | {r['images_per_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['peak_rss_mb']:.0f} | {100 * r['peak_fraction']:.0f} % ({r['matmul_peak_tflops']:.3f}) | {r['rel_diff']:.1e} | "
            f"{100 * r['agreement']:.3f} % |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": name, "flags": flags, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
