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

With ``--slow N`` it runs the mixed load instead (127.0.0.1 only, ``--seconds`` long): N
misbehaving sockets, a third each trickling their headers one byte every 0.5 s (slowloris),
sending whole headers and then the body one byte a second (slow upload), or opening and
sending nothing; each reconnects when the server closes it. Beside them ``--concurrency``
real clients post the image in a loop and a prober GETs /healthz every 0.25 s on a new
connection. Printed: the real clients' answers (2xx, 503, other) and latency, /healthz's
worst and p99 latency and failures, the slow sockets' connections and how the server ended
them, and the server's resident memory, sampled every 0.5 s.

    .venv/bin/python benchmarks/serve_load.py --slow 300 --concurrency 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

    from fcnseg.checkpoint import save_checkpoint
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


async def slow_socket(port: int, kind: str, body_len: int, stop: float, tally: dict) -> None:
    """One misbehaving client, reconnecting until ``stop`` (monotonic seconds)."""
    headers = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
               f"Content-Length: {body_len}\r\n\r\n").encode()
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        tally["connections"] += 1
        opened = time.monotonic()
        ended = "still open at the end"
        try:
            if kind == "headers":
                for byte in headers:
                    if time.monotonic() >= stop:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.5)
                    if reader.at_eof():
                        break
            elif kind == "body":
                writer.write(headers)
                await writer.drain()
                while time.monotonic() < stop and not reader.at_eof():
                    writer.write(b"\xff")
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    if data:
                        ended = "answered " + data.split(b"\r\n", 1)[0].decode(errors="replace").split(" ", 2)[1]
                        break
                    break
            else:  # idle
                try:
                    await asyncio.wait_for(reader.read(1024), max(0.0, stop - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
            if time.monotonic() < stop and ended == "still open at the end":
                ended = "closed by the server"
        except (ConnectionError, OSError):
            ended = "closed by the server"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        key = f"{kind}: {ended}"
        tally["ended"][key] = tally["ended"].get(key, 0) + 1
        tally["held_s"].append(time.monotonic() - opened)


async def mixed(url: str, port: int, body: bytes, slow: int, real: int, seconds: float, pid: int) -> dict:
    """``slow`` misbehaving sockets, ``real`` clients and a /healthz prober for ``seconds``."""
    stop = time.monotonic() + seconds
    tally = {"connections": 0, "refused": 0, "ended": {}, "held_s": []}
    kinds = ("headers", "body", "idle")
    statuses, latencies, health, health_fail, rss = [], [], [], 0, []

    async def client(c: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                r = await c.post("/v1/segment", content=body, headers={"Content-Type": "image/jpeg"})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", 1))))
            except httpx.HTTPError:
                statuses.append(599)
            latencies.append(time.perf_counter() - t)

    async def prober() -> None:
        nonlocal health_fail
        async with httpx.AsyncClient(base_url=url, timeout=5) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    ok = (await c.get("/healthz", headers={"Connection": "close"})).status_code == 200
                except httpx.HTTPError:
                    ok = False
                health.append(time.perf_counter() - t)
                health_fail += not ok
                await asyncio.sleep(0.25)

    async def sampler() -> None:
        while time.monotonic() < stop:
            rss.append(memory(pid)["VmRSS"])
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=real, max_keepalive_connections=real)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:
        tasks = [slow_socket(port, kinds[i % 3], len(body), stop, tally) for i in range(slow)]
        await asyncio.gather(*tasks, *(client(c) for _ in range(real)), prober(), sampler())
    ms = sorted(1000 * x for x in latencies) or [0.0]
    hms = sorted(1000 * x for x in health) or [0.0]
    held = sorted(tally["held_s"]) or [0.0]
    return {
        "seconds": seconds, "slow_sockets": slow, "real_clients": real,
        "real_requests": len(statuses), "real_2xx": sum(200 <= s < 300 for s in statuses), "real_503": statuses.count(503),
        "real_other": sum(not (200 <= s < 300) and s != 503 for s in statuses),
        "real_2xx_per_s": round(sum(200 <= s < 300 for s in statuses) / seconds, 2),
        "real_p50_ms": round(statistics.median(ms), 1), "real_p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
        "healthz_probes": len(health), "healthz_failed": health_fail,
        "healthz_p50_ms": round(statistics.median(hms), 1), "healthz_p99_ms": round(hms[int(0.99 * (len(hms) - 1))], 1),
        "healthz_max_ms": round(hms[-1], 1),
        "slow_connections": tally["connections"], "slow_refused": tally["refused"], "slow_ended": tally["ended"],
        "slow_held_median_s": round(statistics.median(held), 1), "slow_held_max_s": round(held[-1], 1),
        "rss_min_mib": round(min(rss), 0) if rss else None, "rss_max_mib": round(max(rss), 0) if rss else None,
        "peak_rss_mib": memory(pid)["VmHWM"],
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
    p.add_argument("--slow", type=int, default=0, metavar="N", help="the mixed load: N slow sockets beside --concurrency real clients (see above)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the mixed load (default 60)")
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
        if args.slow:
            res = asyncio.run(mixed(url, port, body, args.slow, max(args.concurrency), args.seconds, server.pid))
            report["mixed"] = res
            for k, v in res.items():
                print(f"{k}: {v}", flush=True)
            report["server_alive"] = server.poll() is None and httpx.get(url + "/healthz").status_code == 200
            print(f"server still answering: {report['server_alive']}")
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2))
            return 0
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
