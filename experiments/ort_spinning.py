"""onnxruntime's spinning worker threads: do they cost the torch work that runs between calls?

onnxruntime's intra-op threads spin (busy-wait) for a while after each run
(``session.intra_op.allow_spinning``, on by default) so that the next run starts at once. In
fcnseg the engine's call is followed by torch work (softmax, resizing to the label, argmax,
the confusion matrix, TTA's averaging) on the same cores. This times, for one model and input,
interleaved rounds (each round runs every variant once, in turn), medians:

- ``call``: the engine's call alone;
- ``call + post``: the call then fcnseg's post-processing of eval (``softmax`` at the label's
  size, ``argmax``), timed together;

for onnxruntime with spinning on (its default) and off, and OpenVINO (fcnseg's settings) as a
reference. The model is built with random weights (speed does not depend on them) and exported
with ``fcnseg.export.trace_onnx``.

    PYTHONPATH=. .venv/bin/python experiments/ort_spinning.py [--case recipe|fcn8s-b8] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fcnseg.export import ort_runner, ort_session, parity_inputs, trace_onnx
from fcnseg.inference.backends import OpenVinoBackend, installed
from fcnseg.models import build_model

CASES = {"recipe": ("fcn4s", "bilinear", 1), "fcn8s-b8": ("fcn8s", "deconv", 8)}


def spinning_session(model_bytes: bytes):
    """fcnseg's session (``fcnseg.export.ort_session``) as it was before: spinning on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def post(logits: torch.Tensor) -> torch.Tensor:
    """eval's work after the forward: probabilities at the label's size, then the class map."""
    probs = F.softmax(F.interpolate(logits, size=logits.shape[-2:], mode="bilinear", align_corners=False), 1)
    return probs.argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="recipe", choices=list(CASES))
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    name, upsample, batch = CASES[args.case]
    torch.manual_seed(0)
    model = build_model(name, backbone="resnet18", num_classes=11, upsample=upsample).eval()
    proto = trace_onnx(model)
    data = proto.SerializeToString()
    engines = {
        "onnxruntime, spinning on (default)": ort_runner(spinning_session(data)),
        "onnxruntime, spinning off (fcnseg's session)": ort_runner(ort_session(data)),
    }
    if installed("openvino"):
        import tempfile
        from pathlib import Path

        tmp = Path(tempfile.mkdtemp()) / "m.onnx"
        tmp.write_bytes(data)
        engines["openvino"] = OpenVinoBackend(tmp)
    x = parity_inputs([(360, 480)])[0].repeat(batch, 1, 1, 1)
    times = {(e, m): [] for e in engines for m in ("call", "call + post")}
    for run in engines.values():
        run(x)
    for _ in range(args.rounds):
        for e, run in engines.items():
            t = time.perf_counter()
            run(x)
            times[e, "call"].append(time.perf_counter() - t)
            t = time.perf_counter()
            post(run(x))
            times[e, "call + post"].append(time.perf_counter() - t)
    print(f"{args.case}: {name}/resnet18 {upsample}, {batch}x3x360x480, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, medians")
    print("| engine | call (ms) | call + post (ms) | post's share (ms) |")
    print("|---|---:|---:|---:|")
    for e in engines:
        c, cp = (1000 * statistics.median(times[e, m]) for m in ("call", "call + post"))
        print(f"| {e} | {c:.0f} | {cp:.0f} | {cp - c:.0f} |")


if __name__ == "__main__":
    main()
