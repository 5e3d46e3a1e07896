"""Replays a finished run's end-of-run test-time choice (eval_tta/eval_crf "auto") on its best.pt,
as the run would make it now, with the allowance and validation pace the run measured (or given).

    PYTHONPATH=. python experiments/test_time_choice.py --run runs/pvr/plan [--allowance 144] [--eval-s 20.6]

Prints one line per setting tried (as the run's log does) and what it chose; nothing in the run
is changed. Used to measure the CRF on the kept probability maps (docs/how-to/own-data.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished run's folder (config.yaml, best.pt, metrics.json)")
    p.add_argument("--allowance", type=float, help="seconds the choice may take (default: what the run held back)")
    p.add_argument("--eval-s", type=float, help="seconds of one validation (default: metrics.json's, else none)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.config import load_yaml, resolve_config
    from fcnseg.precision import resolve_precision
    from fcnseg.training.data import training_data
    from fcnseg.training.validation import Validation

    cfg = resolve_config({**load_yaml(a.run / "config.yaml"), "eval_tta": "auto", "eval_crf": "auto", "out": str(a.run)})
    metrics = json.loads((a.run / "metrics.json").read_text())
    tt = metrics.get("test_time") or {}
    allowance = a.allowance if a.allowance is not None else tt.get("allowance_s")
    data = training_data(cfg, main=True)
    device = torch.device("cpu")
    model = model_from_checkpoint(a.run / "best.pt").to(device).eval()
    val = Validation(cfg, data, model, device=device, precision=resolve_precision(cfg.precision, device), distributed=False, world_size=1)
    record = val.choose(model, allowance, a.eval_s)
    print(json.dumps({"chosen": record["chosen"], "images": record["images"], "allowance_s": allowance,
                      "seconds": round(sum(r.get("seconds", 0.0) for r in record["rows"]), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
