"""Side by side in one run: the tutorial's Keras FCN against fcnseg's ``seed`` model (the
same network in PyTorch), on the same synthetic batches (224x224, batch 8, 3 classes), plus
fcnseg-only rows (FCN-8s/VGG16, FCN-8s/ResNet-18, one-image 500x500 latency) and, given a
checkpoint, the bf16-vs-fp32 mean-IU agreement.

Every row runs in its own fresh subprocess, so each peak RSS is that row's own: the Keras
rows in a Python with TensorFlow (``--tf-python``, default ``.venv-bench/bin/python``), the
fcnseg rows through ``python -m fcnseg bench --json`` in ``--torch-python`` (default: this
interpreter). TensorFlow and torch are never imported in the same process.

    python benchmarks/keras_vs_fcnseg.py                 # full run, ~5-10 min on 2 cores
    python benchmarks/keras_vs_fcnseg.py --quick         # the two headline rows, fewer steps
    python benchmarks/keras_vs_fcnseg.py --out results.json --checkpoint runs/x/best.pt \\
        --data camvid --data-root ../shared/data/camvid

Prints a Markdown table and the fcnseg / Keras ratios (train and inference images/s, peak
training memory) for both trainable settings: the tutorial as written (VGG trunk frozen,
``multiout_model.trainable = False``) and fully trainable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_TF_PYTHON = REPO / ".venv-bench" / "bin" / "python"


def _run_json(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd``; its last stdout line is one JSON object."""
    t0 = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "cmd": " ".join(cmd)}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def keras_row(
    py: str,
    *,
    trainable: bool,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_classes: int,
    threads: int | None,
    timeout: float,
) -> dict:
    cmd = [
        py,
        str(HERE / "keras_tutorial.py"),
        "--size",
        str(size),
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--num-classes",
        str(num_classes),
    ]
    if trainable:
        cmd.append("--trainable")
    if threads:
        cmd += ["--threads", str(threads)]
    return _run_json(cmd, timeout)


def fcnseg_row(py: str, *args: str, timeout: float) -> dict:
    return _run_json([py, "-m", "fcnseg", "bench", "--json", *args], timeout)


def agreement_row(
    py: str, checkpoint: str, data: str, data_root: str | None, timeout: float
) -> dict:
    """Mean IU of one checkpoint on the ``val`` split of ``data``, evaluated in fp32 and in
    bf16 (one subprocess: no memory is measured here)."""
    code = (
        "import json; from benchmarks.keras_vs_fcnseg import agreement; "
        f"print(json.dumps(agreement({checkpoint!r}, {data!r}, {data_root!r})))"
    )
    return _run_json([py, "-c", code], timeout)


def agreement(
    checkpoint: str, data: str, data_root: str | None, max_images: int | None = None
) -> dict:
    """``{"fp32_miou", "bf16_miou", "miou_diff_points", ...}`` of ``checkpoint`` on
    ``data``'s val split (mean IU as a fraction; the difference in points, i.e. x100)."""

    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference.evaluate import evaluate

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    dataset = build_dataset(data, root=data_root, split="val")
    out: dict = {"checkpoint": checkpoint, "data": data, "images": len(dataset)}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        m = evaluate(
            model,
            dataset,
            precision=precision,
            mean=ckpt["mean"],
            std=ckpt["std"],
            max_images=max_images,
        )
        out[f"{precision}_miou"] = float(m["mean_iou"])
        out[f"{precision}_pixel_acc"] = float(m["pixel_acc"])
        out[f"{precision}_s"] = time.perf_counter() - t0
    out["miou_diff_points"] = 100 * abs(out["bf16_miou"] - out["fp32_miou"])
    return out


# ----------------------------------------------------------------------------- report


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        else:
            name = platform.processor()
    except OSError:
        name = platform.processor()
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {n} CPUs"


def _num(v, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _rate(r: dict, phase: str) -> str:
    if r.get(f"{phase}_img_s") is None:
        return "—"
    cpu = r.get(f"{phase}_img_s_cpu")
    return f"{r[f'{phase}_img_s']:.2f} ({r[f'{phase}_img_s_best']:.2f}) [{_num(cpu)}]"


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown: images/s as mean (fastest step) [estimated from CPU time], and the share
    of its cores each row got (1.00 = a quiet machine)."""
    head = (
        "| row | precision | train img/s | infer img/s | train ms/step | peak train MB "
        "| GFLOP/img fwd | train TFLOP/s (% of matmul peak) | CPU share train/infer |"
    )
    lines = [head, "|" + "---|" * 9]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:160]} ||||||||")
            continue

        frac = r.get("train_frac_of_peak")
        tfl = (
            f"{r['train_tflops']:.3f} ({100 * frac:.0f}% of {r['peak_tflops']:.3f})"
            if frac is not None
            else "—"
        )
        gf = r.get("flops_per_img")
        share = "/".join(_num(r.get(f"{p}_cpu_share")) for p in ("train", "infer"))
        lines.append(
            f"| {name} | {r.get('precision', '')} | {_rate(r, 'train')} | {_rate(r, 'infer')} "
            f"| {_num(r.get('train_ms_per_step'), '.0f')} | {_num(r.get('peak_mem_mb'), '.0f')} "
            f"| {_num(gf and gf / 1e9, '.1f')} | {tfl} | {share} |"
        )
    return "\n".join(lines)


def ratios(ours: dict, peer: dict) -> dict:
    """fcnseg / Keras: images/s from the mean step (``train_x``) and from the fastest step
    (``train_best_x``, less sensitive to other load on the machine), peak memory."""
    if "error" in ours or "error" in peer:
        return {}
    return {
        "train_x": ours["train_img_s"] / peer["train_img_s"],
        "infer_x": ours["infer_img_s"] / peer["infer_img_s"],
        "train_best_x": ours["train_img_s_best"] / peer["train_img_s_best"],
        "infer_best_x": ours["infer_img_s_best"] / peer["infer_img_s_best"],
        "train_cpu_x": ours["train_img_s_cpu"] / peer["train_img_s_cpu"],
        "infer_cpu_x": ours["infer_img_s_cpu"] / peer["infer_img_s_cpu"],
        "peak_mem_x": ours["peak_mem_mb"] / peer["peak_mem_mb"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tf-python",
        default=str(DEFAULT_TF_PYTHON),
        help="a Python with TensorFlow (default: .venv-bench/bin/python)",
    )
    p.add_argument("--torch-python", default=sys.executable, help="a Python with fcnseg")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the frozen (tutorial) pair, 2 steps after 1 warm-up",
    )
    p.add_argument("--compile", action="store_true", help="also fcnseg seed with torch.compile")
    p.add_argument("--checkpoint", help="a trained checkpoint for the bf16-vs-fp32 mIU row")
    p.add_argument("--data", default="camvid", help="dataset of the agreement row")
    p.add_argument("--data-root", help="its folder")
    p.add_argument("--out", help="write all results as JSON here")
    p.add_argument("--timeout", type=float, default=600, help="seconds per row")
    p.add_argument(
        "--threads",
        type=int,
        help="threads for both frameworks (default: each one's own, all cores); "
        "1 gives comparable per-core figures on a busy machine",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
    if not Path(args.tf_python).exists():
        p.error(
            f"--tf-python {args.tf_python} not found; create it with: python3 -m venv "
            ".venv-bench && .venv-bench/bin/pip install tensorflow-cpu"
        )

    t_start = time.perf_counter()
    common = [
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--num-classes",
        str(args.num_classes),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    threads = ["--threads", str(args.threads)] if args.threads else []
    common += threads
    kw = dict(
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        num_classes=args.num_classes,
        threads=args.threads,
        timeout=args.timeout,
    )
    py = args.torch_python
    rows: list[tuple[str, dict]] = []

    def add(name: str, r: dict) -> dict:
        rows.append((name, r))
        parts = [r["error"]] if "error" in r else []
        for key, label in (
            ("train_img_s", "train img/s"),
            ("infer_img_s", "infer img/s"),
            ("peak_mem_mb", "peak train MB"),
        ):
            if key in r:
                parts.append(f"{label} {r[key]:.2f}")
        print(
            f"[{time.perf_counter() - t_start:6.0f}s] {name}: " + ", ".join(parts),
            file=sys.stderr,
            flush=True,
        )
        return r

    k_frozen = add(
        "Keras tutorial, VGG frozen (as written)", keras_row(args.tf_python, trainable=False, **kw)
    )
    s_frozen = add(
        "fcnseg seed, VGG frozen",
        fcnseg_row(py, "--model", "seed", "--freeze-backbone", *common, timeout=args.timeout),
    )
    pairs = [("VGG frozen (tutorial as written)", s_frozen, k_frozen)]
    if not args.quick:
        k_train = add(
            "Keras tutorial, all trainable", keras_row(args.tf_python, trainable=True, **kw)
        )
        s_train = add(
            "fcnseg seed, all trainable",
            fcnseg_row(py, "--model", "seed", *common, timeout=args.timeout),
        )
        pairs.append(("all trainable", s_train, k_train))
        add(
            "fcnseg seed, VGG frozen, fp32",
            fcnseg_row(
                py,
                "--model",
                "seed",
                "--freeze-backbone",
                "--precision",
                "fp32",
                *common,
                timeout=args.timeout,
            ),
        )
        if args.compile:
            add(
                "fcnseg seed, VGG frozen, torch.compile",
                fcnseg_row(
                    py,
                    "--model",
                    "seed",
                    "--freeze-backbone",
                    "--compile",
                    *common,
                    timeout=args.timeout,
                ),
            )
        add(
            "fcnseg FCN-8s / VGG16",
            fcnseg_row(
                py, "--model", "fcn8s", "--backbone", "vgg16", *common, timeout=args.timeout
            ),
        )
        add(
            "fcnseg FCN-8s / ResNet-18",
            fcnseg_row(
                py, "--model", "fcn8s", "--backbone", "resnet18", *common, timeout=args.timeout
            ),
        )
    latency = None
    if not args.quick:
        latency = add(
            "fcnseg FCN-8s / VGG16 (align=same), 1 image 500x500, inference",
            fcnseg_row(
                py,
                "--model",
                "fcn8s",
                "--backbone",
                "vgg16",
                "--align",
                "same",
                "--size",
                "500",
                "--batch",
                "1",
                "--only",
                "infer",
                "--num-classes",
                "21",
                "--steps",
                "10",
                "--warmup",
                "3",
                *threads,
                timeout=args.timeout,
            ),
        )
    agreement = None
    if args.checkpoint:
        agreement = agreement_row(py, args.checkpoint, args.data, args.data_root, args.timeout)

    versions = {
        k: v
        for k, v in (
            ("tensorflow", k_frozen.get("tensorflow")),
            ("keras", k_frozen.get("keras")),
            ("torch", s_frozen.get("torch")),
        )
        if v
    }
    report = {
        "machine": _cpu(),
        "versions": versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": [{"name": n, **r} for n, r in rows],
        "ratios": {name: ratios(ours, peer) for name, ours, peer in pairs},
        "latency_500_ms": latency and latency.get("infer_ms_per_batch"),
        "agreement": agreement,
        "wall_s": time.perf_counter() - t_start,
    }
    print(f"Machine: {report['machine']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"Synthetic batches {args.batch} x 3 x {args.size} x {args.size}, "
        f"{args.num_classes} classes; {args.steps} timed steps after {args.warmup} warm-up.\n"
    )
    print(table(rows))
    print()
    for name, r in report["ratios"].items():
        if r:
            print(
                f"fcnseg seed / Keras, {name}: train {r['train_x']:.2f}x "
                f"(fastest step {r['train_best_x']:.2f}x, CPU time {r['train_cpu_x']:.2f}x), "
                f"inference {r['infer_x']:.2f}x (fastest {r['infer_best_x']:.2f}x, "
                f"CPU time {r['infer_cpu_x']:.2f}x), peak training memory {r['peak_mem_x']:.2f}x"
            )
    if latency and "error" not in latency:
        print(
            f"FCN-8s/VGG16 (align=same) one 500x500 image: {latency['infer_ms_per_batch']:.0f} ms "
            f"mean, {1000 / latency['infer_img_s_best']:.0f} ms fastest, "
            f"{1000 / latency['infer_img_s_cpu']:.0f} ms from CPU time "
            f"({latency['precision']}, {latency['threads']} threads)"
        )
    if agreement:
        print("bf16 vs fp32 mean IU: " + json.dumps(agreement))
    print(f"\n(total {report['wall_s']:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
