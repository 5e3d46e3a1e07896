"""Data-loader throughput: images/s of augmented 224x224 batches (batch 8) from the real
loader (fcnseg datasets + train_transforms + torch DataLoader), for 0/1/2 workers.

    .venv/bin/python benchmarks/loader_throughput.py [--batches 40] [--workers 0 1 2]
        [--data-dir ../shared/data]

Datasets: synthetic (256x256 scenes), oxford-pet-mini and CamVid from --data-dir when
present. The first batches (worker start-up) are excluded; persistent workers, as in
training. The target: the loader delivers batches >= 3x faster than a training step on
the same machine consumes them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from fcnseg.data import build_dataset
from fcnseg.data.transforms import pad_collate, train_transforms
from fcnseg.weights import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def measure(dataset, workers: int, batches: int, batch_size: int = 8, warmup: int = 3) -> float:
    """Images per second over `batches` batches, after `warmup` batches."""
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=(batches + warmup) * batch_size,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=pad_collate, persistent_workers=workers > 0, drop_last=True,
        prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for images, masks in it:
        assert images.shape[-2:] == (224, 224) and masks.shape[-2:] == (224, 224)
        n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the loader's own work; a trainer would hold the other threads
    tf = train_transforms(224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    candidates = [("synthetic", None, {"size": (256, 256)}, "train")]
    for name, sub, split in (
        ("oxford-pet", "oxford-pet-mini", "trainval"),
        ("camvid", "camvid", "train"),
    ):
        if (args.data_dir / sub).is_dir():
            candidates.append((name, args.data_dir / sub, {}, split))
    print(f"loader throughput, augmented 224x224, batch 8, {os.cpu_count()} CPUs (images/s)")
    header = f"{'dataset':<14}" + "".join(f"{f'workers={w}':>12}" for w in args.workers)
    print(header)
    print("-" * len(header))
    for name, root, opts, split in candidates:
        ds = build_dataset(name, root=root, split=split, transforms=tf, **opts)
        rates = [measure(ds, w, args.batches) for w in args.workers]
        print(f"{name:<14}" + "".join(f"{r:>12.1f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
