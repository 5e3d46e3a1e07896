"""Planned training against the plain defaults, same dataset, same machine, same budget.

    python benchmarks/planner.py --data folder --data-root ../shared/data/isbi-em-membrane \\
        --data-option 'classes={membrane: 0, cell: 255}' --max-minutes 3 --out runs/bench-planner/em [--seed 1]
    python benchmarks/planner.py --data oxford-pet --data-root ../shared/data/oxford-pet-mini \\
        --max-minutes 3 --eval-split test --out runs/bench-planner/pet

One side trains the plan (``fcnseg plan --out plan.yaml`` then ``fcnseg train --config
plan.yaml``); the other the zero-argument defaults spelled out as flags (``--no-plan`` and
every option the planner sets at its ``TrainConfig`` default), with ``--epochs 1000`` so that the
budget, not the default 8 epochs, ends it, and the plan's dataset options (the same validation
carve). Both run one after the other, each in its own process, then ``fcnseg eval --json`` scores
each best.pt on ``--eval-split`` (default: the plan's val split) at the labels' resolution.
Prints a Markdown table: side, mean IU, pixel accuracy, steps, train and eval seconds, and the
commands; ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the TrainConfig keys the planner chooses: the defaults side spells each one out
PLANNED_KEYS = (
    "model", "backbone", "weights", "crop", "scale", "progressive", "batch_size", "hflip", "rotate90", "color_jitter",
    "class_weights", "copy_paste", "hard_pixels", "optimizer", "lr", "weight_decay", "schedule",
    "warmup_steps", "eval_every", "precision", "workers", "preload", "seed",
)


def default_flags() -> list[str]:
    """The TrainConfig defaults of PLANNED_KEYS as flags (empty or None ones left out: their
    flag cannot say 'none', and leaving them out is the default)."""
    sys.path.insert(0, str(REPO))
    from fcnseg.config import TrainConfig

    d = TrainConfig()
    flags = ["--no-plan", "--epochs", "1000"]
    for key in PLANNED_KEYS:
        value = getattr(d, key)
        flag = "--" + key.replace("_", "-")
        if value is None or value == [] or value is False:  # off by default: a store_true flag left out
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def run(cmd: list[str], log: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if rc != 0:
        sys.exit(f"failed ({rc}); see {log}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--data-option", action="append", default=[])
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--eval-split", default=None, help="split both sides are scored on (default: the plan's val split)")
    p.add_argument("--out", default="runs/bench-planner")
    p.add_argument("--only", choices=("planned", "defaults"), default=None, help="run one side")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--seed", type=int, default=None, help="the training seed of both sides (default: the plan's and the defaults' 0); the validation carve stays")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "fcnseg"]
    data = ["--data", args.data] + (["--data-root", args.data_root] if args.data_root else [])
    for opt in args.data_option:
        data += ["--data-option", opt]
    plan_yaml = out / "plan.yaml"
    plan_s = run([*py, "plan", *data, "--max-minutes", str(args.max_minutes), "--out", str(plan_yaml)], out / "plan.log")
    import yaml

    planned = yaml.safe_load(plan_yaml.read_text())
    same_data = ["--data", args.data] + (["--data-root", args.data_root] if args.data_root else [])
    for key, value in (planned.get("data_options") or {}).items():  # the same split (val carve) on both sides
        same_data += ["--data-option", f"{key}={json.dumps(value)}"]
    split = args.eval_split or planned.get("val_split", "val")
    sides = {
        "planned": [*py, "train", "--config", str(plan_yaml), "--out", str(out / "planned")],
        "defaults": [*py, "train", *same_data, *default_flags(), "--max-minutes", str(args.max_minutes), "--out", str(out / "defaults")],
    }
    if args.seed is not None:  # the last --seed given wins on both sides
        for cmd in sides.values():
            cmd += ["--seed", str(args.seed)]
    rows = []
    for side, cmd in sides.items():
        if args.only and side != args.only:
            continue
        train_s = run(cmd, out / f"{side}.log")
        metrics = json.loads((out / side / "metrics.json").read_text())
        eval_cmd = [*py, "eval", "--checkpoint", str(out / side / "best.pt"), *same_data, "--split", split, "--backend", "torch", "--json"]
        print("$", " ".join(eval_cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(eval_cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        eval_s = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"eval failed: {res.stderr.strip().splitlines()[-1:]}")
        scores = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({
            "side": side, "mean_iou": scores["mean_iou"], "pixel_acc": scores["pixel_acc"], "steps": metrics["steps"],
            "train_s": train_s, "run_time_s": metrics["time_s"], "eval_s": eval_s, "split": split, "command": " ".join(cmd),
            "per_class": scores.get("per_class"),
        })
    from fcnseg.bench import cpu_name

    print(f"\n{args.data} ({args.data_root}), {args.max_minutes:g} min budget, scored on {split}; {cpu_name()}; planning {plan_s:.1f}s (process)")
    print("| side | mean IU | pixel acc | steps | train process s | eval s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {100 * r['mean_iou']:.2f} | {100 * r['pixel_acc']:.2f} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "max_minutes": args.max_minutes, "cpu": cpu_name(), "plan_s": plan_s, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
