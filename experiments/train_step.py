"""The trainer's own step on real data: what the data path and the loss from coarse scores
cost or buy, variants interleaved in one process.

Builds the run a config describes through the engine's public functions (its data, model,
loss, copy-paste, optimizer: ``training_data``, ``build_model_for_training``,
``build_train_step``; nothing is written), then times optimizer steps of one stage's crops in
blocks, the variants taking turns so that a machine's drift hits all of them alike:

- ``fixed batch``: one batch reused (no loader, no augmentation): the compute floor;
- ``fixed batch, loss on full-resolution logits``: the model's logits upsampled for the
  whole batch before the loss, instead of upsampled_segmentation_loss on its coarse scores;
- ``loader, N workers``: fresh augmented batches from a DataLoader with N worker processes
  (0: augmented in the training process, between steps).

It times the loss tail alone (the coarse scores' upsampling, loss and backward) for the whole
batch against upsampled_segmentation_loss's chunks. (Late freezing and bilinear shrinking,
which this script also timed, were removed from fcnseg: docs/experiments/camvid.md.)

    .venv/bin/python experiments/train_step.py --config configs/camvid.yaml \\
        --data-root ../shared/data/camvid --stage 0
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.utils.data import DataLoader

from fcnseg.config import resolve_config
from fcnseg.data.sampling import EpochSampler, SeededDataset
from fcnseg.precision import resolve_device, resolve_precision
from fcnseg.training.data import stage_transforms, training_data
from fcnseg.training.losses import loss_chunk, segmentation_loss, upsampled_segmentation_loss
from fcnseg.training.step import build_model_for_training, build_train_step


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

    # lr 1e-5: the steps change the weights little, so every variant times the same model
    cfg = resolve_config({"data_root": args.data_root, "train_split": args.split, "lr": 1e-5, "out": "/tmp/fcnseg_train_step", "tensorboard": False}, config_file=args.config)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = training_data(cfg, main=True)
    model = build_model_for_training(cfg, data.num_classes)
    weight = torch.tensor(data.class_weight) if data.class_weight else None
    step = build_train_step(model, cfg, device=device, precision=precision, num_classes=data.num_classes, class_weight=weight, paste_classes=data.paste_classes)
    stage = data.stages[args.stage]
    data.train.transforms = stage_transforms(cfg, stage, data.mean, data.std)
    step.net.train()
    print(f"{cfg.model}/{cfg.backbone}, batch {cfg.batch_size}, crops {stage['crop'][0]}x{stage['crop'][1]} of frames scaled "
          f"{stage['scale'][0]:g}-{stage['scale'][1]:g}, {precision.name}, {torch.get_num_threads()} threads")

    loaders, iters = {}, {}
    for w in args.workers:
        sampler = EpochSampler(data.train, num_replicas=1, rank=0, seed=cfg.seed)
        loaders[w] = DataLoader(SeededDataset(data.train, cfg.seed), batch_size=cfg.batch_size, sampler=sampler, num_workers=w, drop_last=True, persistent_workers=w > 0)
        iters[w] = iter(loaders[w])

    def batch_from(w: int):
        try:
            return next(iters[w])
        except StopIteration:
            iters[w] = iter(loaders[w])
            return next(iters[w])

    fixed = batch_from(args.workers[0])
    coarse_default = step.coarse_loss

    def run(source, coarse: bool = coarse_default) -> None:
        step.coarse_loss = coarse
        step([batch_from(source) if source is not None else (fixed[0].clone(), fixed[1].clone())])  # the trainer's own step

    variants: dict[str, tuple] = {"fixed batch": (None, coarse_default)}
    if coarse_default:
        variants["fixed batch, loss on full-resolution logits"] = (None, False)
    variants.update({f"loader, {w} workers": (w, coarse_default) for w in args.workers})
    for source, coarse in variants.values():  # warm-up (and the workers' first batches)
        for _ in range(2):
            run(source, coarse)
    t0 = time.perf_counter()
    for _ in range(3):
        run(None)
    n = args.steps or max(2, round(1.5 / ((time.perf_counter() - t0) / 3)))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.blocks):
        for name, (source, coarse) in variants.items():
            t = time.perf_counter()
            for _ in range(n):
                run(source, coarse)
            times[name].append((time.perf_counter() - t) / n * 1000)
    base = statistics.median(times["fixed batch"])
    print(f"\n{n} steps a block, {args.blocks} blocks a variant; median (min) ms per step")
    print("| variant | ms/step | min | vs fixed batch |\n|---|---:|---:|---:|")
    for name, v in times.items():
        med = statistics.median(v)
        print(f"| {name} | {med:.1f} | {min(v):.1f} | {base / med:.2f}x |")
    if coarse_default:
        step.coarse_loss = True
        loss_tail(step, fixed, args.blocks)


def loss_tail(step, batch, blocks: int) -> None:
    """The loss tail alone, from the model's coarse scores of ``batch`` (bf16, as autocast
    leaves them) to their gradient: upsampled for the whole batch then segmentation_loss,
    against upsampled_segmentation_loss a chunk of images at a time."""
    images, masks = batch
    precision, device = step.precision, step.device
    with torch.no_grad(), precision.autocast(device):
        scores, _ = step.net(images.contiguous(memory_format=torch.channels_last) if precision.channels_last else images, coarse=True)
    upsample = functools.partial(step.model.upsample_scores, size=tuple(images.shape[-2:]))
    weight, hard = step.class_weight, step.hard_pixels

    def whole() -> None:
        s = scores.detach().requires_grad_()
        with precision.autocast(device):
            loss = segmentation_loss(upsample(s), masks, weight, hard)
        loss.backward()

    def chunked(chunk: int | None) -> None:
        s = scores.detach().requires_grad_()
        with precision.autocast(device):
            loss = upsampled_segmentation_loss(s, masks, upsample, weight, hard, chunk)
        loss.backward()

    n = len(images)
    default = loss_chunk(n, masks[0].numel())
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
