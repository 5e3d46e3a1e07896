"""What a user gets by default: whole `fcnseg eval` and `fcnseg predict` commands with the default
engine (`--backend auto`) against eager fp32 (`--backend torch --precision fp32`), on a trained
checkpoint and its labelled split, timed as whole commands in interleaved rounds (medians).

    PYTHONPATH=. .venv/bin/python benchmarks/default_inference.py --checkpoint RUN/best.pt \\
        --data camvid --data-root ../shared/data/camvid --split val [--rounds 3] [--test-time] [--json out.json]

First, with an empty engine cache, one default `fcnseg eval` is run and timed on its own: its
engine check (export, int8 calibration, task check, timing) is the first-call cost, paid once
per checkpoint and machine. Then each round runs, in turn: eval eager fp32, eval default,
predict eager fp32, predict default (predict over the split's images, into fresh folders).
Printed: seconds (median), the ratio default / eager, mean IU of both evals, the engine chosen
and its one-line reason, and the CPU (model name and flags). With ``--test-time`` each round also
runs the default eval with the test-time settings the run saved (``--tta auto --crf auto``: the
CamVid recipe's 14 views + CRF) and prints its cost as a multiple of the plain default eval;
once, after the rounds, the same with eager fp32 (``--backend torch --precision fp32``) gives the
mean IU the fast path must keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fcnseg.inference.backends import cpu_fingerprint


def _run(argv: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fcnseg", *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): fcnseg {' '.join(argv)}\n{p.stderr[-2000:]}")
    return seconds, p.stdout + p.stderr


def _images(data: str, root: str, split: str) -> list[str]:
    from fcnseg.data import build_dataset

    ds = build_dataset(data, root=root, split=split)
    if not getattr(ds, "samples", None):
        raise SystemExit(f"{data}: cannot list the image files of split {split}")
    return [str(image) for image, _ in ds.samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--tta", default="none", help="TTA for every command (default none: the plain engine)")
    ap.add_argument("--crf", default="none")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--test-time", action="store_true", help="also time eval with the run's saved TTA + CRF")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="fcnseg-bench-cache-"))
    env = {**os.environ, "FCNSEG_CACHE": str(cache)}
    common = ["--checkpoint", args.checkpoint, "--tta", args.tta, "--crf", args.crf]
    data = ["--data", args.data, "--data-root", args.data_root, "--split", args.split]
    images = _images(args.data, args.data_root, args.split)
    print(f"CPU: {cpu_fingerprint()}", flush=True)
    print(f"{len(images)} images of {args.data}/{args.split}; tta {args.tta}, crf {args.crf}", flush=True)

    first_s, log = _run(["eval", *common, *data, "--json"], env)
    line = next((ln for ln in log.splitlines() if ln.startswith("engine:")), "")
    res = json.loads(next(ln for ln in log.splitlines() if ln.startswith("{")))
    print(f"first default eval (engine check included, empty cache): {first_s:.1f} s; {res['engine'].get('seconds', '?')} s of check", flush=True)
    print(res["engine"]["summary"], flush=True)

    cmds = {
        "eval eager fp32": ["eval", *common, *data, "--json", "--backend", "torch", "--precision", "fp32"],
        "eval default": ["eval", *common, *data, "--json"],
        "predict eager fp32": ["predict", *common, "--backend", "torch", "--precision", "fp32", *images, "--out", "OUT"],
        "predict default": ["predict", *common, *images, "--out", "OUT"],
    }
    if args.test_time:
        cmds["eval default, the run's TTA + CRF"] = ["eval", "--checkpoint", args.checkpoint, *data, "--json"]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    scores: dict[str, float] = {}
    for r in range(args.rounds):
        for name, argv in cmds.items():
            out = Path(tempfile.mkdtemp(prefix="fcnseg-bench-out-"))
            argv = [str(out) if a == "OUT" else a for a in argv]
            seconds, log = _run(argv, env)
            shutil.rmtree(out, ignore_errors=True)
            times[name].append(seconds)
            if name.startswith("eval"):
                scores[name] = json.loads(next(ln for ln in log.splitlines() if ln.startswith("{")))["mean_iou"]
            print(f"  round {r + 1}: {name} {seconds:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for verb in ("eval", "predict"):
        base, dflt = med[f"{verb} eager fp32"], med[f"{verb} default"]
        rows.append({"command": verb, "eager_fp32_s": round(base, 2), "default_s": round(dflt, 2), "speedup": round(base / dflt, 2)})
        print(f"{verb:8s} eager fp32 {base:7.1f} s   default {dflt:7.1f} s   {base / dflt:.2f}x", flush=True)
    if args.test_time:
        tt_name = "eval default, the run's TTA + CRF"
        tt, plain = med[tt_name], med["eval default"]
        rows.append({"command": "eval, the run's TTA + CRF", "plain_default_s": round(plain, 2), "test_time_s": round(tt, 2), "ratio": round(tt / plain, 2)})
        print(f"eval with the run's TTA + CRF {tt:7.1f} s = {tt / plain:.1f}x the plain default eval; "
              f"mean IU {100 * scores[tt_name]:.2f}", flush=True)
        eager_tt_s, log = _run(["eval", "--checkpoint", args.checkpoint, *data, "--json", "--backend", "torch", "--precision", "fp32"], env)
        eager_tt = json.loads(next(ln for ln in log.splitlines() if ln.startswith("{")))["mean_iou"]
        rows[-1].update(eager_fp32_s=round(eager_tt_s, 2), eager_fp32_mean_iou=eager_tt, mean_iou=scores[tt_name])
        print(f"  the same in eager fp32 (once): {eager_tt_s:.1f} s, mean IU {100 * eager_tt:.2f}", flush=True)
    d_miou = 100 * (scores["eval default"] - scores["eval eager fp32"])
    print(f"mean IU: eager fp32 {100 * scores['eval eager fp32']:.2f}, default {100 * scores['eval default']:.2f} ({d_miou:+.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_fingerprint(), "images": len(images), "tta": args.tta, "crf": args.crf, "rows": rows,
            "first_eval_s": round(first_s, 1), "engine": res["engine"], "engine_line": line,
            "mean_iou": {k: scores[k] for k in scores}, "times": times,
        }, indent=1))
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
