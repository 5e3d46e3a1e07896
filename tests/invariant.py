"""The invariant of issue 26: the training losses of the first optimizer steps of what ships
(``configs/camvid.yaml`` in fp32 and the zero-argument ``fcnseg train``) do not change when
the engine is reorganised. ``record`` runs a training through the public ``train()`` and
returns the loss of each step (``log_every: 1`` reads every step's loss; that read changes
nothing in the numerics); ``tests/test_invariant.py`` compares them with the numbers stored
in ``tests/data/invariant_losses.json``.

Record anew (only for a change made on purpose to the numerics, with the reason in the
commit), from the repository root:

    python tests/invariant.py            # writes tests/data/invariant_losses.json
"""

from __future__ import annotations

import json
import platform
import re
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "tests" / "data" / "invariant_losses.json"
CAMVID = "../shared/data/camvid"  # relative to the repository root
STEPS = 60

# name -> (config file or None, options given to train(), the equivalent command)
RECORDINGS: dict[str, tuple[str | None, dict, str]] = {
    # max_minutes 600: the recipe's 30-minute budget decides only when the progressive stage
    # switches (at 15 minutes) and when the run ends, neither of which comes within 60 steps on
    # the recording machine (9 minutes); a longer budget keeps a slower machine from switching
    # crops before step 60, and changes nothing in those steps (their lr is the warmup's)
    "camvid_fp32": (
        "configs/camvid.yaml",
        {"data_root": CAMVID, "precision": "fp32", "train_split": "train", "seed": 0, "max_minutes": 600},
        f"fcnseg train --config configs/camvid.yaml --data-root {CAMVID} --precision fp32 --train-split train --seed 0",
    ),
    # the zero-argument run's 3-minute budget lifted (max_minutes 0): under a budget the lr
    # schedule's length after warmup follows the measured speed, so it differs run to run
    "synthetic_default": (None, {"max_minutes": 0}, "fcnseg train --max-minutes 0"),
    "synthetic_fp32": (None, {"precision": "fp32", "max_minutes": 0}, "fcnseg train --precision fp32 --max-minutes 0"),
}


class _Enough(Exception):
    pass


def record(name: str, steps: int = STEPS) -> list[float]:
    """The training loss of each of the first ``steps`` optimizer steps of recording ``name``
    (run from the repository root's point of view: relative data roots resolve there)."""
    from fcnseg.training.train import train

    config_file, options, _ = RECORDINGS[name]
    losses: list[float] = []

    def callback(event: dict) -> None:
        if event["event"] == "train":
            assert event["step"] == len(losses) + 1, event
            losses.append(event["loss"])
            if len(losses) == steps:
                raise _Enough

    options = dict(options)
    if "data_root" in options:
        options["data_root"] = str((REPO / options["data_root"]).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {**options, "log_every": 1, "tensorboard": False, "out": str(Path(tmp) / "run")}
        try:
            train(cfg, config_file=REPO / config_file if config_file else None, callback=callback)
        except _Enough:
            pass
    return losses


def cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    family = re.search(r"^cpu family\s*:\s*(\d+)$", text, re.M)
    number = re.search(r"^model\s*:\s*(\d+)$", text, re.M)
    return {
        "model_name": model.group(1).strip() if model else platform.processor(),
        "family/model": f"{family.group(1)}/{number.group(1)}" if family and number else None,
        "flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")),
    }


def key(name: str) -> str:
    """The store's key for recording ``name`` made on this CPU: ``name`` on AVX-512 CPUs (where
    they were first recorded), ``name@avx2`` on AVX2-only ones, whose fp32 kernels sum in
    another order (oneDNN dispatches by instruction set, so CPUs of one set agree closely)."""
    flags = cpu()["flags"]
    return name if "avx512f" in flags or "avx2" not in flags else f"{name}@avx2"


def main(names: list[str]) -> None:
    from fcnseg.precision import resolve_precision

    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    for name in names or list(RECORDINGS):
        losses = record(name)
        config_file, options, command = RECORDINGS[name]
        precision = options.get("precision", "auto")
        store[key(name)] = {
            "command": command + f" (first {STEPS} steps, log_every 1)",
            "precision": resolve_precision(precision, torch.device("cpu")).name,
            "cpu": cpu(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "losses": losses,
        }
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps(store, indent=1) + "\n")
        print(key(name), len(losses), losses[:3], "...", losses[-1], flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
