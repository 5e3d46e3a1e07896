"""Whether a trained checkpoint scores better with BatchNorm statistics re-estimated after
training ("precise BN", Wu & Johnson 2021) than with the running averages it was saved with.

The running averages of a run are an exponential average (momentum 0.1) over its last ~10
batches of 8 training crops. This script replaces them, in every BatchNorm layer, by the
plain average over ``--batches`` batches of training images, drawn in one of these ways:

- ``crops``: the run's last-stage training crops (its scales, flips, colour jitter and
  copy-paste), i.e. the same distribution as the running averages, many more samples;
- ``frames``: whole training frames at scale 1 (the label size, which evaluation sees), with
  the run's flips, colour jitter and copy-paste;
- ``clean-frames``: whole training frames at scale 1, as evaluation sees them (no augmentation);
- ``per-scale``: for each test-time scale, whole frames (as ``frames``) resized by that scale
  as inference resizes them, each view of the TTA then normalised by its own scale's statistics.

It scores the checkpoint on the validation split with the run's own test-time augmentation
(``--tta`` to override), as saved and with each source asked for:

    .venv/bin/python experiments/bn_statistics.py --checkpoint runs/camvid_train/best.pt \\
        --data-root ../shared/data/camvid --source frames crops
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.config import TrainConfig, resolve_config
from fcnseg.data.sampling import SeededDataset
from fcnseg.data.transforms import copy_paste, train_transforms
from fcnseg.inference.evaluate import evaluate
from fcnseg.inference.segment import parse_tta
from fcnseg.precision import resolve_precision
from fcnseg.training.data import stage_transforms, training_data

SOURCES = ("crops", "frames", "clean-frames", "per-scale")


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def estimate(model: nn.Module, batches: list[torch.Tensor], precision) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every BatchNorm's (mean, var) averaged over ``batches`` (train-mode forward passes);
    leaves the model in eval mode with these statistics loaded (callers load what they want)."""
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    model.train()
    with precision.autocast(torch.device("cpu")):
        for x in batches:
            model(x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return [(m.running_mean.clone(), m.running_var.clone()) for m in bns]


def load_stats(model: nn.Module, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for m, (mean, var) in zip(batchnorms(model), stats, strict=True):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


class PerScale(nn.Module):
    """Runs ``model`` with the statistics of the test-time scale closest to its input's height."""

    def __init__(self, model: nn.Module, stats: dict[float, list], height: int) -> None:
        super().__init__()
        self.model, self.stats, self.height, self.current = model, stats, height, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = min(self.stats, key=lambda s: abs(s * self.height - x.shape[-2]))
        if scale != self.current:
            load_stats(self.model, self.stats[scale])
            self.current = scale
        return self.model(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--source", nargs="+", choices=SOURCES, default=["frames"])
    p.add_argument("--batches", type=int, default=40, help="batches of the run's batch size to average over")
    p.add_argument("--tta", default=None, help="test-time augmentation (default: the checkpoint's eval_tta)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    run_cfg = {k: v for k, v in (ckpt.get("config") or {}).items() if k in fields}
    cfg = resolve_config({**run_cfg, "data_root": args.data_root, "out": "/tmp/fcnseg_bn_statistics", "tensorboard": False, "workers": 0, "resume": None})
    data = training_data(cfg, main=True)
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    tta = parse_tta(args.tta if args.tta is not None else cfg.eval_tta)
    model = model_from_checkpoint(ckpt)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    height, width = np.shape(data.val.load(0)[1])[:2]  # the label size

    def score(net: nn.Module) -> float:
        return evaluate(net, data.val, precision=precision, batch_size=4, tta=tta, mean=data.mean, std=data.std)["mean_iou"]

    def draw(source: str) -> list[torch.Tensor]:
        last = data.stages[-1]
        if source == "crops":
            stage = last
        else:
            stage = {**last, "crop": [height, width], "scale": [1.0, 1.0]}
        tf = stage_transforms(cfg, stage, data.mean, data.std)
        if source == "clean-frames":
            tf = train_transforms([height, width], mean=data.mean, std=data.std, scale=(1.0, 1.0), hflip=False, color_jitter=0.0)
        data.train.transforms = tf
        seeded = SeededDataset(data.train, args.seed)
        g = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(len(seeded), generator=g).tolist()
        B, out = cfg.batch_size, []
        for b in range(args.batches):
            xs, ms = zip(*[seeded[(0, order[(b * B + k) % len(order)])] for k in range(B)], strict=True)
            x, y = torch.stack(xs), torch.stack(ms)
            if data.paste_classes and source != "clean-frames":
                x, y = copy_paste(x, y, data.paste_classes, cfg.copy_paste, generator=g)
            out.append(x)
        return out

    print(f"{args.checkpoint}: {args.batches} batches of {cfg.batch_size}, val with {tta}")
    print("| BN statistics | val mean IU |\n|---|---:|")
    print(f"| as saved (running averages) | {100 * score(model):.2f} |", flush=True)
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorms(model)]
    for source in args.source:
        if source == "per-scale":
            frames = draw("frames")
            stats = {}
            for s in tta.scales:
                size = (max(1, round(height * s)), max(1, round(width * s)))
                resized = [x if s == 1 else F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in frames]
                stats[s] = estimate(model, resized, precision)
            miou = score(PerScale(model, stats, height).eval())
        else:
            load_stats(model, estimate(model, draw(source), precision))
            miou = score(model)
        load_stats(model, saved)
        print(f"| {source} | {100 * miou:.2f} |", flush=True)


if __name__ == "__main__":
    main()
