"""A run's directory (``new_run_dir``, ``find_resume``) and its event log: ``metrics.jsonl``
(one JSON object a line), TensorBoard scalars, and the ``callback`` of ``train()``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fcnseg.errors import ConfigError


class RunLog:
    """Records events ``{"event": kind, "step": N, ...}``. ``run_dir`` None: a process that
    writes nothing (DDP ranks other than 0). Opened at ``step`` > 0 (a resumed run), the
    events after that step are dropped from metrics.jsonl, so none is repeated."""

    def __init__(self, run_dir: Path | None, *, step: int = 0, tensorboard: bool = False, callback: Callable[[dict], None] | None = None) -> None:
        self.events: list[dict] = []
        self.callback, self.tb = callback, None
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        if self.path is None:
            return
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    e = json.loads(line)
                    if e.get("step", 0) <= step and not (e.get("step", 0) == step and e.get("event") == "end"):
                        self.events.append(e)
            self.path.write_text("".join(json.dumps(e) + "\n" for e in self.events))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)

    def record(self, event: dict) -> None:
        if self.path is None:
            return
        self.events.append(event)
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if self.tb is not None:
            for key, value in event.items():
                if key not in ("event", "step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{event['event']}/{key}", value, event["step"])
        self.notify(event)

    def notify(self, event: dict) -> None:
        """Passes ``event`` to the callback only (events that metrics.jsonl does not hold)."""
        if self.callback is not None and self.path is not None:
            self.callback(event)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def find_resume(cfg: dict) -> Path:
    """The checkpoint ``resume`` names: a path, or ``auto`` → OUT/last.pt (OUT: ``out``, or
    the newest run under runs/ with a last.pt)."""
    if cfg["resume"] != "auto":
        return Path(cfg["resume"])
    if cfg["out"]:
        return Path(cfg["out"]) / "last.pt"
    candidates = sorted(Path("runs").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume without a path needs --out RUN_DIR (or a run under runs/ with a last.pt)")
    return candidates[-1]


def new_run_dir(cfg: dict) -> Path:
    if cfg["out"]:
        return Path(cfg["out"])
    name = cfg["name"] or datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / name
    k = 1
    while path.exists() and not cfg["name"]:
        path = Path("runs") / f"{name}-{k}"
        k += 1
    return path
