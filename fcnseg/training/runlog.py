"""A run's directory (``new_run_dir``, ``find_resume``) and its event log: ``metrics.jsonl``
(one JSON object a line), TensorBoard scalars, and the ``callback`` of ``train()``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fcnseg.config import TrainConfig
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

    def end(self, result: dict, event: dict) -> None:
        """The run's last words: ``metrics.json`` (``result``; its only writer), the ``end``
        ``event`` in metrics.jsonl, then the log is closed."""
        if self.path is not None:
            (self.path.parent / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
            self.record({"event": "end", **event})
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def find_resume(cfg: TrainConfig) -> Path:
    """The checkpoint ``resume`` names: a path, or ``auto`` → OUT/last.pt (OUT: ``out``, or
    the newest run under runs/ with a last.pt)."""
    if cfg.resume != "auto":
        return Path(cfg.resume)
    if cfg.out:
        return Path(cfg.out) / "last.pt"
    candidates = sorted(Path("runs").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError("--resume without a path needs --out RUN_DIR (or a run under runs/ with a last.pt)")
    return candidates[-1]


# the files a run writes into its folder (what --overwrite removes)
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.json", "curves.png")
# a folder holding one of these holds a run's work: a checkpoint, or a finished run's result
# (a run killed before its first checkpoint leaves only config.yaml and metrics.jsonl, which
# the same command may replace: there is nothing to resume)
WORK_FILES = ("last.pt", "best.pt", "metrics.json")


def holds_run(path: Path) -> str | None:
    """The first of ``WORK_FILES`` in ``path`` (None: no run's work there)."""
    return next((name for name in WORK_FILES if (path / name).exists()), None)


def free_name(path: Path) -> Path:
    """``path`` itself if nothing is there, else the first ``path-2``, ``path-3``, ... that is free."""
    k, free = 2, path
    while free.exists():
        free = path.with_name(f"{path.name}-{k}")
        k += 1
    return free


def new_run_dir(cfg: TrainConfig, *, overwrite: bool = False, create: bool = True) -> Path:
    """The run's folder. ``out`` (or runs/``name``) as given: a ``ConfigError`` when it holds
    a run, unless the run continues it (``resume`` from a checkpoint in it) or ``overwrite``.
    Without either: runs/<timestamp>, created here exclusively (``create``; DDP rank 0), so
    two runs started in the same second get two folders (``-1``, ``-2``, ...)."""
    if cfg.out or cfg.name:
        path = Path(cfg.out) if cfg.out else Path("runs") / cfg.name
        found = holds_run(path) if path.is_dir() else None
        continues = cfg.resume and Path(cfg.resume).resolve().parent == path.resolve()
        if found and not continues and not overwrite:
            flag = f"--out {path}" if cfg.out else f"--name {cfg.name}"
            other = f"--out {free_name(path)}" if cfg.out else f"--name {free_name(path).name}"
            raise ConfigError(
                f"{flag} holds a run ({path / found}); continue it with `fcnseg train --resume --out {path}`, "
                f"start a new one with {other}, or pass --overwrite to replace it"
            )
        return path
    name = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = Path("runs") / name, 1
    while True:
        try:
            if not create:
                return path
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, k = Path("runs") / f"{name}-{k}", k + 1
        except OSError as e:
            from fcnseg.errors import OutputError

            raise OutputError(f"cannot create run folder {path}: {e.strerror or e}; run from a folder you can write to, or pass --out DIR") from None


def remove_run(path: Path) -> None:
    """Removes the files of the run in ``path`` (``RUN_FILES``, samples/, tensorboard/) and
    nothing else: what ``--overwrite`` replaces."""
    import shutil

    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    for name in ("samples", "tensorboard"):
        shutil.rmtree(path / name, ignore_errors=True)


def diverged(run_dir: Path, *, loss: float, step: int, steps: int, lr: float, log_every: int) -> tuple[dict, str]:
    """A loss that became NaN or infinite within the last ``steps`` steps (up to ``step``):
    metrics.json's record of it, and the message that names the last good checkpoint kept
    (last.pt or best.pt, whichever is later) and the fix."""
    from fcnseg.checkpoint import load_checkpoint

    first = step - steps + 1
    at = f"step {step}" if steps == 1 else f"steps {first}-{step} (the loss is read every {log_every} steps)"
    good = [(p, load_checkpoint(p)["step"]) for p in (run_dir / "last.pt", run_dir / "best.pt") if p.is_file()]
    if good:
        path, k = max(good, key=lambda g: g[1])
        kept = f"the last good checkpoint {path} (step {k}) is kept as it was; lower --lr (or set --clip-grad) and train again, or --resume {path} --lr SMALLER"
    else:
        path, k, kept = None, None, "no checkpoint was written before it; lower --lr (or set --clip-grad) and train again"
    result = {"stopped": "non-finite loss", "loss": str(loss), "step": step, "first_step": first, "lr": lr,
              "last_good_checkpoint": str(path) if path else None, "last_good_step": k}
    return result, f"the training loss became {loss} at {at}, lr {lr:.3g}: the run diverged and stopped; {kept}"
