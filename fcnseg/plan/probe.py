"""The machine probe: what one training step costs here, measured.

``probe()`` times the trainer's own step (``fcnseg.bench.benchmark``, which runs
``fcnseg.training.step.TrainStep``) for the planner's model at two crop sizes, in the precision
and memory layout this machine trains in (``precision="auto"``), and fits
``seconds per step = overhead + per_pixel x (batch x H x W)``. On a CPU a step's time is read
from the process's CPU time (``fcnseg.bench``'s ``train_img_s_cpu``): what the step costs on
this machine's cores, not what other work left of them during the probe. The result is cached per machine
(CPU model, threads, device, torch version, precision): the first plan on a machine pays a few
seconds, later ones nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("fcnseg.plan")

VERSION = 1
# what the planner trains (fcnseg.plan.planner.MODEL) at two crops, batch 8
CANDIDATES = (
    {"model": "fcn4s", "backbone": "resnet18", "crop": 128, "batch": 8},
    {"model": "fcn4s", "backbone": "resnet18", "crop": 224, "batch": 8},
)


def machine_key(device: str = "auto", precision: str = "auto") -> dict:
    """What a step's cost depends on besides the model: the CPU (or GPU), threads, torch."""
    import torch

    from fcnseg.bench import cpu_name
    from fcnseg.precision import resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, quiet=True)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "cpu": cpu_name(), "gpu": gpu, "device": dev.type, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "precision": prec.name, "channels_last": prec.channels_last,
    }


def _cache_path(key: dict) -> Path:
    from fcnseg.plan.fingerprint import cache_dir

    digest = hashlib.sha1(json.dumps({**key, "v": VERSION, "c": CANDIDATES}, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "probes" / f"probe-{digest}.json"


def fit_cost(points: list[dict]) -> tuple[float, float]:
    """(overhead s, s per batch pixel) through the measured points (least squares on two or
    more; one point: all of its time per pixel)."""
    xs = [p["batch"] * p["crop"] ** 2 for p in points]
    ys = [p["step_s"] for p in points]
    if len(points) == 1 or len(set(xs)) == 1:
        return 0.0, ys[0] / xs[0]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    b = max(b, 1e-12)
    a = max(0.0, my - b * mx)
    return a, b


def probe(*, device: str = "auto", precision: str = "auto", max_seconds: float = 30.0, cache: bool = True) -> dict:
    """The step cost on this machine: ``{"overhead_s", "pixel_s", "points", "machine",
    "seconds", "cache"}``; ``step_s(batch, h, w) = overhead_s + pixel_s * batch * h * w``.
    The second candidate is skipped once ``max_seconds`` is spent (a slow machine's probe
    stays within the planner's share of the budget)."""
    key = machine_key(device, precision)
    path = _cache_path(key)
    if cache and path.is_file():
        try:
            result = json.loads(path.read_text())
            result["cache"] = {"hit": True, "path": str(path)}
            return result
        except (OSError, ValueError):
            pass
    from fcnseg.bench import benchmark

    t0 = time.perf_counter()
    points = []
    for cand in CANDIDATES:
        if points and time.perf_counter() - t0 > max_seconds / 2:
            break
        r = benchmark(
            cand["model"], backbone=cand["backbone"], size=cand["crop"], batch=cand["batch"], precision=precision,
            device=device, num_classes=2, steps=2, warmup=1, phases=("train",), flops=False, peak=False,
        )
        # on a CPU the step time the process's CPU time gives, as if it had its cores to itself
        # (a shared machine's load would otherwise make the plan of this machine for good)
        wall = r["train_ms_per_step"] / 1000
        own = cand["batch"] / r["train_img_s_cpu"] if r.get("train_img_s_cpu") else cand["batch"] / r["train_img_s_best"]
        points.append({**cand, "step_s": min(own, wall), "wall_step_s": wall, "cpu_share": r.get("train_cpu_share")})
    a, b = fit_cost(points)
    result = {"version": VERSION, "machine": key, "points": points, "overhead_s": a, "pixel_s": b, "seconds": time.perf_counter() - t0}
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(result, indent=1))
            os.replace(tmp, path)
        except OSError:
            log.warning("could not cache the machine probe in %s", path.parent)
    result["cache"] = {"hit": False, "path": str(path) if cache else None}
    return result


def step_seconds(probe_result: dict, batch: int, h: int, w: int) -> float:
    """The probed seconds of one training step of ``batch`` crops of ``h`` x ``w``."""
    return probe_result["overhead_s"] + probe_result["pixel_s"] * batch * h * w


def format_probe(p: dict) -> str:
    m = p["machine"]
    where = m["gpu"] or m["cpu"]
    how = "cached" if p.get("cache", {}).get("hit") else f"measured in {p['seconds']:.1f}s"
    pts = ", ".join(f"{q['crop']}px x{q['batch']}: {q['step_s'] * 1000:.0f} ms" for q in p["points"])
    return f"machine: {where}, {m['threads']} threads, {m['precision']} ({how}): {p['points'][0]['model']}/{p['points'][0]['backbone']} step {pts}"
