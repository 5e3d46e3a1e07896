"""Load on `fcnseg serve`: throughput, latency percentiles, error counts and the server's memory.

Starts `fcnseg serve` on 127.0.0.1 (a free port) in a subprocess, then sends ``--requests``
POST /v1/segment requests of one image at each ``--concurrency`` (httpx async client, one
block per level, in order), and prints per block: requests/s, p50/p95/p99 latency, the 2xx,
4xx and 5xx counts, and the server's resident memory (VmRSS) and peak (VmHWM) from
/proc/<pid>/status after warm-up and after every block, so a leak shows as RSS climbing from
block to block (503s, the queue-full answers, are
counted among the 5xx and shown apart). The machine (lscpu model and the flags that matter) is printed first.

Without ``--checkpoint`` the model is an untrained FCN-8s/ResNet-18 with 3 classes (the
cost of serving does not depend on the weights). Without ``--image``, the first
Oxford-IIIT Pet photo in ../shared/data/oxford-pet-mini, else a generated 360x480 image.

    .venv/bin/python benchmarks/serve_load.py --requests 300 --concurrency 1 4 16 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PET = REPO.parent / "shared" / "data" / "oxford-pet-mini" / "images"


def machine() -> str:
    model, flags, cpus = platform.processor() or "?", [], os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
                flags = [f for f in value.split() if f in wanted]
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {cpus} CPUs, flags {' '.join(flags) or '-'}"


def memory(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_checkpoint(folder: Path) -> Path:
    import torch

    from fcnseg.engine.checkpoint import save_checkpoint
    from fcnseg.models import build_model

    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="resnet18", num_classes=3)
    path = folder / "fcn8s_resnet18.pt"
    save_checkpoint(
        {"model": model.state_dict(), "model_config": model.config, "classes": ["pet", "background", "border"],
         "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "config": {}},
        path,
    )
    return path


def default_image(folder: Path) -> Path:
    photos = sorted(PET.glob("*.jpg")) if PET.is_dir() else []
    if photos:
        return photos[0]
    path = folder / "generated.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (360, 480, 3), np.uint8)).save(path, quality=92)
    return path


async def block(url: str, body: bytes, n: int, concurrency: int, fmt: str) -> dict:
    latencies, statuses = [], []
    queue = asyncio.Queue()
    for _ in range(n):
        queue.put_nowait(None)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:

        async def worker():
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    r = await client.post(f"/v1/segment?format={fmt}", content=body)
                    await r.aread()
                    statuses.append(r.status_code)
                except httpx.HTTPError:
                    statuses.append(599)  # no answer at all counts as a server error
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, max(0, round(q / 100 * len(ms)) - 1))]

    return {
        "concurrency": concurrency, "requests": n, "seconds": round(wall, 2),
        "requests_per_s": round(n / wall, 2),
        "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(95), 1), "p99_ms": round(pct(99), 1),
        "2xx": sum(200 <= s < 300 for s in statuses), "4xx": sum(400 <= s < 500 for s in statuses),
        "5xx": sum(s >= 500 for s in statuses), "503": statuses.count(503),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: an untrained FCN-8s/ResNet-18, 3 classes")
    p.add_argument("--image", default=None, help="default: a Pet photo from ../shared/data, else a generated 360x480")
    p.add_argument("--requests", type=int, default=300, help="requests per concurrency level (default 300)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--workers", type=int, default=1, help="fcnseg serve --workers (default 1)")
    p.add_argument("--max-queue", type=int, default=None, help="fcnseg serve --max-queue (default: enough for the highest concurrency)")
    p.add_argument("--format", default="png", choices=("png", "json", "overlay"))
    p.add_argument("--serve-args", default="", help="more `fcnseg serve` flags, e.g. '--tta flip --precision fp32'")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fcnseg_serve_load_"))
    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(tmp)
    image = Path(args.image) if args.image else default_image(tmp)
    body = image.read_bytes()
    w, h = Image.open(io.BytesIO(body)).size
    max_queue = args.max_queue if args.max_queue is not None else max(args.concurrency)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(ckpt), "--port", str(port),
           "--workers", str(args.workers), "--max-queue", str(max_queue), *args.serve_args.split()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print((tmp / "server.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.5)
        info = httpx.get(url + "/v1/model").json()
        first = httpx.post(url + f"/v1/segment?format={args.format}", content=body, timeout=600)
        first.raise_for_status()
        report = {
            "machine": machine(),
            "command": " ".join(["benchmarks/serve_load.py", *sys.argv[1:]]),
            "model": f"{info['model']}/{info['backbone']}", "inference": info["inference"],
            "image": f"{image.name} {w}x{h}", "format": args.format,
            "workers": args.workers, "max_queue": max_queue,
            "memory_after_warmup": memory(server.pid), "blocks": [],
        }
        print(f"machine: {report['machine']}")
        info = httpx.get(url + "/v1/model").json()  # again: `auto` names its choice after a request
        report["inference"] = info["inference"]
        print(f"server: {report['model']}, backend {info['inference']['backend']}, {info['inference']['device']} {info['inference']['precision']}, "
              f"workers {args.workers}, max queue {max_queue}; image {report['image']}, format {args.format}")
        mem = report["memory_after_warmup"]
        print(f"after warm-up: RSS {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")
        print(f"{'conc':>4} {'req':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'2xx':>5} {'4xx':>4} {'5xx':>4} {'(503)':>5} {'RSS MiB':>8} {'peak MiB':>8}")
        for c in args.concurrency:
            res = asyncio.run(block(url, body, args.requests, c, args.format))
            res.update({"rss_mib": memory(server.pid)["VmRSS"], "peak_rss_mib": memory(server.pid)["VmHWM"]})
            report["blocks"].append(res)
            print(f"{c:>4} {res['requests']:>5} {res['requests_per_s']:>7.2f} {res['p50_ms']:>8.1f} {res['p95_ms']:>8.1f} "
                  f"{res['p99_ms']:>8.1f} {res['2xx']:>5} {res['4xx']:>4} {res['5xx']:>4} {res['503']:>5} {res['rss_mib']:>8.0f} {res['peak_rss_mib']:>8.0f}", flush=True)
        report["server_alive"] = server.poll() is None and httpx.get(url + "/healthz").status_code == 200
        print(f"server still answering: {report['server_alive']}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
