"""The own-data guide's budget curve: planned ``fcnseg train`` on the ISBI EM stack at several
time budgets, each best.pt scored by ``fcnseg eval`` on the run's carved validation slices.

    python docs/figures/make_budget.py                      # 5, 15, 30 minutes (~55 min on 2 cores)
    python docs/figures/make_budget.py --minutes 5 15       # some of them
    python docs/figures/make_budget.py --reuse              # keep runs that already have metrics.json

Writes ``own_data_budget.png`` (val mean IU and membrane IoU against the budget) and
``budget.json`` (per budget: the commands, wall time, steps, the plan's crop/scale/batch, the
test-time choice and the scores), which docs/how-to/own-data.md quotes through
``{{ fig.budget.* }}`` and tests/test_docs_trained.py checks. Data: ``../shared/data`` next to the
checkout (``--data``). Runs go to ``runs/figures/em-budget-M``; they run one after the other, so
nothing else should use the machine meanwhile (the budget is wall-clock time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA = Path("../shared/data")
RUNS = Path("runs/figures")
CLASSES = "classes={membrane: 0, cell: 255}"


def _fcnseg(args: list[str], log: Path | None = None) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("$ fcnseg " + " ".join(f"'{a}'" if " " in a else a for a in args), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fcnseg", *args], cwd=REPO, env=env, check=True,
                         stdout=subprocess.PIPE if log is None else open(log, "w"), stderr=subprocess.STDOUT if log is not None else None, text=True)
    return time.perf_counter() - t0, out.stdout or ""


def run_budget(root: Path, minutes: float, reuse: bool) -> dict:
    out = RUNS / f"em-budget-{minutes:g}"
    train = ["train", "--data", "folder", "--data-root", str(root), "--data-option", CLASSES, "--max-minutes", f"{minutes:g}", "--out", str(out)]
    record = REPO / out / "figure_run.json"
    if not (reuse and record.is_file() and (REPO / out / "metrics.json").is_file()):
        (REPO / out).mkdir(parents=True, exist_ok=True)
        seconds, _ = _fcnseg([*train, "--overwrite"], log=REPO / out / "train.log")
        record.write_text(json.dumps({"wall_seconds": round(seconds, 1), "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}))
    info = json.loads(record.read_text())
    metrics = json.loads((REPO / out / "metrics.json").read_text())
    plan = yaml.safe_load((REPO / out / "plan.yaml").read_text())
    evaluate = ["eval", "--checkpoint", str(out / "best.pt"), "--json"]
    t0 = time.perf_counter()
    _, text = _fcnseg(evaluate)
    eval_s = time.perf_counter() - t0
    scores = json.loads(text[text.index("{"):])
    return {
        "minutes": minutes,
        "command": "fcnseg " + " ".join(f"'{a}'" if " " in a else a for a in train),
        "eval_command": "fcnseg " + " ".join(evaluate),
        "wall_seconds": info["wall_seconds"], "finished_utc": info["finished_utc"],
        "steps": metrics["steps"], "epochs": metrics["epochs"],
        "plan": {k: plan.get(k) for k in ("model", "crop", "scale", "batch_size", "progressive", "class_weights", "hard_pixels", "lr")},
        "test_time": (metrics.get("test_time") or {}).get("chosen"),
        "test_time_rows": [{k: (round(100 * v, 2) if k == "mean_iou" else round(v, 1) if k == "seconds" else v) for k, v in r.items()}
                           for r in (metrics.get("test_time") or {}).get("rows", [])],
        "val_images": scores["num_images"],
        "mean_iou": round(100 * scores["mean_iou"], 2), "pixel_acc": round(100 * scores["pixel_acc"], 2),
        "per_class": {name: round(100 * v["iou"], 2) for name, v in scores["per_class"].items()},
        "eval_seconds": round(eval_s, 1), "eval_tta": scores.get("tta"), "eval_crf": scores.get("crf"),
    }


def draw(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    x = [r["minutes"] for r in rows]
    ax.plot(x, [r["mean_iou"] for r in rows], "o-", label="val mean IU")
    ax.plot(x, [r["per_class"]["membrane"] for r in rows], "s--", label="membrane IoU")
    for r in rows:
        ax.annotate(f"{r['mean_iou']:.1f}\n{r['steps']} steps", (r["minutes"], r["mean_iou"]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("time budget of `fcnseg train` (minutes, wall clock, 2 CPU cores)")
    ax.set_ylabel("% on the carved val slices")
    ax.set_xticks(x)
    ax.set_title("ISBI EM, planned training: what the budget buys", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    lo = min(min(r["per_class"]["membrane"] for r in rows), min(r["mean_iou"] for r in rows))
    ax.set_ylim(max(0, lo - 10), 100)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0, 30.0])
    p.add_argument("--reuse", action="store_true", help="keep runs that already have metrics.json (rescore and redraw only)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args(argv)
    root = a.data / "isbi-em-membrane"
    if not (REPO / root).is_dir():
        raise SystemExit(f"{root}: no ISBI EM stack here (../shared/data or --data)")
    path = a.out / "budget.json"
    old = {r["minutes"]: r for r in (json.loads(path.read_text())["by_minutes"].values() if path.is_file() else [])}
    for minutes in a.minutes:
        old[minutes] = run_budget(root, minutes, a.reuse)
        print(f"  {minutes:g} min: val mean IU {old[minutes]['mean_iou']}, {old[minutes]['steps']} steps", flush=True)
    rows = [old[m] for m in sorted(old)]
    sys.path.insert(0, str(REPO))
    from make_trained import _machine  # noqa: E402  (the same machine line as the other trained figures)

    numbers = {"minutes": [r["minutes"] for r in rows], "machine": _machine(), "command": "python docs/figures/make_budget.py",
               "by_minutes": {f"{r['minutes']:g}": r for r in rows}}
    path.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    draw(rows, a.out / "own_data_budget.png")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
