"""CamVid ablation at an equal COMPUTE budget (CPU-seconds), not an equal wall-clock one.

The machine these rows were measured on was shared with other jobs, so wall-clock budgets
would compare the neighbours' load, not the recipes. Each row instead gets the number of
optimizer steps that ``--budget-cpu-s`` CPU-seconds buy it: its cost per step (model
forward/backward/AdamW on a random batch of its crop size, plus the augmentation of its
batch, measured as process CPU time, median of a few steps after warm-up) sets the step
count, rounded to whole epochs. A quiet 30-minute run on 2 cores is about 3600 CPU-s.
Training then runs through ``fcnseg.training.train.train`` (the real engine and data
pipeline) with a fixed epoch count and one validation at the end; the final model is
scored on val at the labels' full resolution with the row's test-time input scale.

    .venv/bin/python experiments/camvid_ablation.py --rows base half --budget-cpu-s 600 \\
        --data-root ../shared/data/camvid --out runs/ablation
    .venv/bin/python experiments/camvid_ablation.py --cost-only --rows base half three_q

Rows are overrides of configs/camvid.yaml (see ``ROWS``); ``eval_tta`` is the row's
inference (e.g. ``scales=0.5``: the image is resized by 0.5, run, and its logits resized
back to the label's size). Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid.yaml"

# every row: overrides of configs/camvid.yaml (keys of fcnseg.config.TrainConfig),
# on top of FIXED, which pins what the recipe may change later (the rows were measured
# training on train alone with full median-frequency weights, FCN-8s and the plain loss)
FIXED = {
    "train_split": "train",
    "val_split": "val",
    "class_weights": "median",
    "model": "fcn8s",
    "hard_pixels": 1.0,
}
ROWS: dict[str, dict] = {
    # the issue's plain baseline: FCN-8s/ResNet-18 at full resolution, 256x256 crops
    "base": {"crop": [256, 256], "scale": [0.5, 1.5], "eval_tta": None},
    # the same net at 3/4 resolution (train scales centred on 0.75, predict at 0.75)
    "three_q": {"crop": [256, 256], "scale": [0.375, 1.125], "eval_tta": "scales=0.75"},
    # half resolution: crops of the whole (downscaled) frame, predict at 0.5
    "half": {"crop": [176, 240], "scale": [0.35, 0.75], "eval_tta": "scales=0.5"},
    # half resolution without median-frequency class weights
    "half_noweights": {
        "crop": [176, 240],
        "scale": [0.35, 0.75],
        "eval_tta": "scales=0.5",
        "class_weights": "none",
    },
    # the tutorial's net and the paper's FCN-8s/VGG16, both from scratch
    "seed": {
        "model": "seed",
        "backbone": "vgg16",
        "upsample": "deconv",
        "crop": [224, 224],
        "scale": [0.5, 1.0],
        "eval_tta": None,
    },
    "vgg16_fcn8s": {
        "model": "fcn8s",
        "backbone": "vgg16",
        "upsample": "deconv",
        "crop": [256, 256],
        "scale": [0.5, 1.5],
        "eval_tta": None,
    },
}


def step_cost(
    cfg, *, steps: int = 5, num_classes: int = 11, data_root: str | None = None
) -> float:
    """CPU-seconds per optimizer step of ``cfg``: the trainer's step on a random batch
    of the crop size (median of ``steps`` after 2 warm-up steps) plus the augmentation of
    one batch of real images (when ``data_root`` is given)."""
    from fcnseg.precision import resolve_precision
    from fcnseg.training.step import build_model_for_training, build_train_step

    device = torch.device("cpu")
    prec = resolve_precision(cfg.precision, device)
    model = build_model_for_training(cfg, num_classes)
    # the trainer's own step (loss, class weights, copy-paste, optimizer) at a tiny lr
    weight = torch.ones(num_classes) if cfg.class_weights != "none" else None
    step = build_train_step(model, dataclasses.replace(cfg, lr=1e-4), device=device, precision=prec, num_classes=num_classes, class_weight=weight, paste_classes=range(num_classes))
    step.net.train()
    h, w = cfg.crop
    x = torch.randn(cfg.batch_size, 3, h, w)
    y = torch.randint(0, num_classes, (cfg.batch_size, h, w))
    times = []
    for _ in range(steps + 2):
        t0 = time.process_time()
        step([(x, y)])
        times.append(time.process_time() - t0)
    cost = sorted(times[2:])[len(times[2:]) // 2]
    if data_root:
        from fcnseg.data import build_dataset
        from fcnseg.data.transforms import train_transforms
        from fcnseg.weights import preprocessing

        pre = preprocessing("resnet18", "imagenet")
        tf = train_transforms(
            cfg.crop,
            mean=pre["mean"],
            std=pre["std"],
            scale=tuple(cfg.scale),
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
        )
        ds = build_dataset(cfg.data, root=data_root, split="train", transforms=tf)
        n = 3 * cfg.batch_size
        t0 = time.process_time()
        for i in range(n):
            ds[i]
        cost += (time.process_time() - t0) / n * cfg.batch_size
    return cost


def main() -> None:
    from fcnseg.config import resolve_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=["base", "half"], choices=list(ROWS))
    p.add_argument(
        "--budget-cpu-s",
        type=float,
        default=600.0,
        help="CPU-seconds of training per row (quiet 30 min on 2 cores: ~3600)",
    )
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    p.add_argument("--out", default="runs/camvid_ablation")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument(
        "--epochs", type=int, default=None, help="skip the cost probe: train this many epochs"
    )
    p.add_argument(
        "--cost-only", action="store_true", help="print each row's CPU-s per step and stop"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.models import build_model
    from fcnseg.training.train import train

    for name in args.rows:
        row = {**FIXED, **ROWS[name]}
        cfg = resolve_config({k: v for k, v in row.items()}, config_file=CONFIG)
        cost = step_cost(cfg, data_root=args.data_root)
        spe = 367 // cfg.batch_size
        epochs = args.epochs or max(1, round(args.budget_cpu_s / cost / spe))
        result = {
            "row": name,
            "cpu_s_per_step": round(cost, 3),
            "epochs": epochs,
            "steps": epochs * spe,
        }
        if args.cost_only:
            print(json.dumps(result), flush=True)
            continue
        warmup = min(cfg.warmup_steps, max(1, epochs * spe // 20))
        t0, c0 = time.monotonic(), time.process_time()
        run = train(
            {
                **row,
                "config": str(CONFIG),
                "data_root": args.data_root,
                "out": f"{args.out}/{name}",
                "epochs": epochs,
                "max_minutes": None,
                "eval_every": 10**6,
                "warmup_steps": warmup,
                "workers": 0,
                "tensorboard": False,
                "num_samples": 0,
            }
        )
        result.update(
            train_wall_s=round(time.monotonic() - t0), train_cpu_s=round(time.process_time() - c0)
        )
        ckpt = load_checkpoint(Path(run) / "last.pt")
        model = build_model(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        val = build_dataset("camvid", root=args.data_root, split="val")
        m = evaluate(model, val, tta=row.get("eval_tta"), mean=ckpt["mean"], std=ckpt["std"])
        result.update(
            eval_tta=row.get("eval_tta"),
            mean_iou=round(100 * m["mean_iou"], 2),
            pixel_acc=round(100 * m["pixel_acc"], 2),
            mean_acc=round(100 * m["mean_acc"], 2),
            iou={k: round(100 * v["iou"], 1) for k, v in m["per_class"].items()},
        )
        if row.get("eval_tta") is not None and not math.isnan(m["mean_iou"]):
            plain = evaluate(model, val, mean=ckpt["mean"], std=ckpt["std"])
            result["mean_iou_at_scale_1"] = round(100 * plain["mean_iou"], 2)
        print(json.dumps(result), flush=True)
        with open(Path(args.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
