"""The trainer's own step on real data: what the data path, the training-scale resize and
late freezing cost or buy, variants interleaved in one process.

Builds the run a config describes (its dataset, model, loss, copy-paste, optimizer; nothing
is written), then times optimizer steps of one stage's crops in blocks, the variants taking
turns so that a machine's drift hits all of them alike:

- ``fixed batch``: one batch reused (no loader, no augmentation): the compute floor;
- ``fixed batch, loss on full-resolution logits``: the model's logits upsampled for the
  whole batch before the loss, instead of upsampled_segmentation_loss on its coarse scores;
- ``loader, N workers``: fresh augmented batches from a DataLoader with N worker processes
  (0: augmented in the training process, between steps);
- ``frozen ...``: the fixed batch with those modules' parameters frozen (freeze_schedule).

It times the loss tail alone (the coarse scores' upsampling, loss and backward) for the whole
batch against upsampled_segmentation_loss's chunks, and one crop's augmentation with the training-scale resize shrinking frames with
INTER_AREA (the default) and bilinear (``area_for_downscale: false``), on one thread.

    .venv/bin/python benchmarks/train_step.py --config configs/camvid.yaml \\
        --data-root ../shared/data/camvid --stage 0
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.utils.data import DataLoader

from fcnseg.data.transforms import copy_paste, train_transforms
from fcnseg.engine import train as T
from fcnseg.engine.config import resolve_config

FREEZES = {
    "stem": ["backbone.conv1", "backbone.bn1"],
    "stem+layer1": ["backbone.conv1", "backbone.bn1", "backbone.layer1"],
    "stem+layer1+layer2": ["backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--stage", type=int, default=0, help="which stage's crops (0: the first progressive stage; -1: the main crop)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--blocks", type=int, default=6, help="timed blocks per variant")
    p.add_argument("--steps", type=int, default=0, help="steps per block (0: about 1.5 s worth)")
    args = p.parse_args()

    cfg = resolve_config({"data_root": args.data_root, "train_split": args.split, "out": "/tmp/fcnseg_train_step", "tensorboard": False}, config_file=args.config)
    tr = T._Trainer(cfg, None)
    tr._build_data()
    tr._build_model()
    tr._wrap()  # train_net, as the trainer steps it
    tr.optimizer = T.build_optimizer(T.param_groups(tr.net, cfg["weight_decay"]), name=cfg["optimizer"], lr=1e-5, momentum=cfg["momentum"], device=tr.device)
    stage = tr.stages[args.stage]
    tr.train_ds.transforms = tr._stage_transforms(stage)
    tr.net.train()
    print(f"{cfg['model']}/{cfg['backbone']}, batch {cfg['batch_size']}, crops {stage['crop'][0]}x{stage['crop'][1]} of frames scaled "
          f"{stage['scale'][0]:g}-{stage['scale'][1]:g}, {tr.precision.name}, {torch.get_num_threads()} threads")

    loaders, iters = {}, {}
    for w in args.workers:
        sampler = T.EpochSampler(tr.train_ds, num_replicas=1, rank=0, seed=cfg["seed"])
        loaders[w] = DataLoader(T.SeededDataset(tr.train_ds, cfg["seed"]), batch_size=cfg["batch_size"], sampler=sampler, num_workers=w, drop_last=True, persistent_workers=w > 0)
        iters[w] = iter(loaders[w])

    def batch_from(w: int):
        try:
            return next(iters[w])
        except StopIteration:
            iters[w] = iter(loaders[w])
            return next(iters[w])

    fixed = batch_from(args.workers[0])

    def freeze(names: list[str]) -> None:
        for n, prm in tr.model.named_parameters():
            prm.requires_grad_(not any(n.startswith(m + ".") for m in names))

    coarse_default = tr.coarse_loss

    def step(source, coarse: bool = coarse_default) -> None:
        images, masks = batch_from(source) if source is not None else (fixed[0].clone(), fixed[1].clone())
        if tr.paste_classes:
            images, masks = copy_paste(images, masks, tr.paste_classes, cfg["copy_paste"])
        if tr.precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        tr.coarse_loss = coarse
        with tr.precision.autocast(tr.device):
            loss = tr._loss(images, masks)  # the trainer's own
        loss.backward()
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)

    variants: dict[str, tuple] = {"fixed batch": (None, [], coarse_default)}
    if coarse_default:
        variants["fixed batch, loss on full-resolution logits"] = (None, [], False)
    variants.update({f"loader, {w} workers": (w, [], coarse_default) for w in args.workers})
    variants.update({f"fixed batch, frozen {k}": (None, v, coarse_default) for k, v in FREEZES.items()})
    for source, names, coarse in variants.values():  # warm-up (and the workers' first batches)
        freeze(names)
        for _ in range(2):
            step(source, coarse)
    freeze([])
    t0 = time.perf_counter()
    for _ in range(3):
        step(None)
    n = args.steps or max(2, round(1.5 / ((time.perf_counter() - t0) / 3)))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.blocks):
        for name, (source, names, coarse) in variants.items():
            freeze(names)
            step(source, coarse)  # the first step after a change of frozen set is not timed
            t = time.perf_counter()
            for _ in range(n):
                step(source, coarse)
            times[name].append((time.perf_counter() - t) / n * 1000)
    base = statistics.median(times["fixed batch"])
    print(f"\n{n} steps a block, {args.blocks} blocks a variant; median (min) ms per step")
    print("| variant | ms/step | min | vs fixed batch |\n|---|---:|---:|---:|")
    for name, v in times.items():
        med = statistics.median(v)
        print(f"| {name} | {med:.1f} | {min(v):.1f} | {base / med:.2f}x |")

    if coarse_default:
        loss_tail(tr, fixed, cfg, args.blocks)

    # one crop's augmentation, bilinear vs INTER_AREA for shrinking frames, one thread
    torch.set_num_threads(1)
    pre = dict(mean=tr.mean, std=tr.std, scale=tuple(stage["scale"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"])
    image, mask = tr.train_ds.load(0)
    print("\n| training-scale resize | ms per crop (augmentation, one thread) |\n|---|---:|")
    for name, area in (("INTER_AREA when shrinking (the default)", True), ("bilinear (area_for_downscale: false)", False)):
        tf = train_transforms(stage["crop"], **pre, area_for_downscale=area)
        reps = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(40):
                tf(image, mask)
            reps.append((time.perf_counter() - t) / 40 * 1000)
        print(f"| {name} | {statistics.median(reps):.2f} |")


def loss_tail(tr, batch, cfg, blocks: int) -> None:
    """The loss tail alone, from the model's coarse scores of ``batch`` (bf16, as autocast
    leaves them) to their gradient: upsampled for the whole batch then segmentation_loss,
    against upsampled_segmentation_loss a chunk of images at a time."""
    images, masks = batch
    with torch.no_grad(), tr.precision.autocast(tr.device):
        scores, _ = tr.net(images.contiguous(memory_format=torch.channels_last) if tr.precision.channels_last else images, coarse=True)
    upsample = functools.partial(tr.model.upsample_scores, size=tuple(images.shape[-2:]))
    weight, hard = tr.class_weight, cfg["hard_pixels"]

    def whole() -> None:
        s = scores.detach().requires_grad_()
        with tr.precision.autocast(tr.device):
            loss = T.segmentation_loss(upsample(s), masks, weight, hard)
        loss.backward()

    def chunked(chunk: int | None) -> None:
        s = scores.detach().requires_grad_()
        with tr.precision.autocast(tr.device):
            loss = T.upsampled_segmentation_loss(s, masks, upsample, weight, hard, chunk)
        loss.backward()

    n = len(images)
    default = T.loss_chunk(n, masks[0].numel())
    variants = {"whole batch upsampled, then segmentation_loss": whole}
    variants.update({f"upsampled_segmentation_loss, {c} image{'s' * (c > 1)} a chunk{' (the default)' * (c == default)}": functools.partial(chunked, c) for c in (1, 2, 4, n)})
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():
        f()
    for _ in range(blocks):
        for name, f in variants.items():
            t = time.perf_counter()
            for _ in range(5):
                f()
            times[name].append((time.perf_counter() - t) / 5 * 1000)
    print(f"\nthe loss tail alone (scores {tuple(scores.shape)} -> loss -> their gradient), median ms of {blocks} blocks of 5")
    print("| loss tail | ms |\n|---|---:|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.1f} |")


if __name__ == "__main__":
    main()
