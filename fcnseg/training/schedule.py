"""Schedules: the learning rate per step, and the plan of a run under a time budget.

Both are small pure classes: measured timings in, decisions out (no clock, no trainer).
"""

from __future__ import annotations

import math

import torch

from fcnseg.errors import ConfigError


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "poly",
    power: float = 0.9,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Linear warmup ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps``,
    then over the remaining steps ``poly``: ``base_lr * (1 - t) ** power`` or ``cosine``:
    ``base_lr * (1 + cos(pi t)) / 2`` with ``t`` going 0 → 1; ``constant``: ``base_lr``.
    Steps past ``total_steps`` get the final value (0 for poly/cosine)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "poly":
        return base_lr * (1.0 - t) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"unknown schedule {schedule!r}; choose poly, cosine or constant")


class LRSchedule:
    """Sets every param group's lr to ``lr_at(step) * group["lr_scale"]``.

    ``total_steps`` may be revised during a run (a ``max_minutes`` budget is turned into a
    step count from the measured speed); it is part of the state dict."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, total_steps: int, warmup_steps: int, schedule: str) -> None:
        self.optimizer = optimizer
        self.base_lr, self.total_steps = base_lr, int(total_steps)
        self.warmup_steps, self.schedule = warmup_steps, schedule
        self.last_lr = base_lr

    def apply(self, step: int) -> float:
        lr = lr_at(step, base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = state["total_steps"]



def stage_at(stages: list[dict], done: float) -> int:
    """The index of the stage a run is in when the fraction ``done`` of it has passed:
    the first whose ``until`` is later (the last stage lasts to the end)."""
    return next(i for i, stage in enumerate(stages) if done < stage["until"] or i == len(stages) - 1)


# last.pt at an epoch end writes the whole training state (0.45-0.5 s for ResNet-18's 134 MB
# with AdamW on an AMD EPYC [AVX2 only: no AVX-512, no native bf16]): with epochs of a few seconds
# (small datasets: ISBI EM's 26 slices, ~3 s an epoch) that was ~15 % of the run's time. An epoch
# end writes it once the time since the last write is at least save_s / CKPT_OVERHEAD (~10 s);
# the first epoch end, --ckpt-every-steps, best.pt and the end of the run always write.
CKPT_OVERHEAD = 0.05


class TimeBudget:
    """The plan of a run under a wall-clock budget of ``seconds`` (None: no budget), over
    ``stages`` (progressive resizing: ``[{"until", "crop", ...}]``, the last one the main
    crop; a stage ends at fraction ``until`` of the budget).

    It is told what the run measured (``add_steps``: step times, per stage; ``eval_s``,
    ``save_s``, ``draw_s``, ``epoch_end_s``) and answers how many steps still fit
    (``steps_left``) and whether the next step would overrun (``out_of_time``). Step times
    are kept per crop pixel, so a stage not yet run is estimated from the current one
    (throughput goes with pixels)."""

    def __init__(self, seconds: float | None, stages: list[dict], *, saves: int = 1) -> None:
        self.seconds, self.stages, self.saves = seconds, stages, saves
        self.steps, self.step_s = 0, 0.0  # the whole run's timed steps
        self.stage_steps, self.stage_step_s = 0, 0.0  # the current stage's
        self.px_step_s: float | None = None  # seconds per step per crop pixel, as last measured
        self.eval_s: float | None = None
        self.save_s = self.draw_s = self.choice_s = 0.0
        self.epoch_end_s: list[float] = []

    def checkpoint_due(self, since_s: float) -> bool:
        """Whether an epoch end ``since_s`` seconds after the last write of last.pt writes it."""
        return since_s >= self.save_s / CKPT_OVERHEAD

    def add_steps(self, steps: int, seconds: float, stage: int) -> None:
        """``steps`` steps of ``stage`` took ``seconds``."""
        self.steps += steps
        self.step_s += seconds
        self.stage_steps += steps
        self.stage_step_s += seconds
        h, w = self.stages[stage]["crop"]
        self.px_step_s = self.stage_step_s / self.stage_steps / (h * w)

    def new_stage(self) -> None:
        """The crops changed: the step time is measured again."""
        self.stage_steps, self.stage_step_s = 0, 0.0

    def step_time(self, stage: int) -> float:
        """Seconds per step on the crops of ``stage`` (0 before any step was timed)."""
        h, w = self.stages[stage]["crop"]
        return self.px_step_s * h * w if self.px_step_s else 0.0

    def reserve_s(self) -> float:
        """Time kept for the end: the final evaluation, the test-time choice (``choice_s``),
        ``saves`` checkpoints and the pictures."""
        return 1.1 * (self.eval_s or 0.0) + self.choice_s + self.saves * self.save_s + self.draw_s + 1.0

    def out_of_time(self, elapsed: float, stage: int) -> bool:
        return self.seconds is not None and elapsed + self.reserve_s() + self.step_time(stage) >= self.seconds

    def steps_left(self, elapsed: float, stage: int, *, steps_per_epoch: int, eval_every: int) -> int | None:
        """The steps that fit in what is left of the budget after ``elapsed`` seconds (in this
        stage and the later ones, each at its step time, plus the end-of-epoch work spread
        over the steps); None without a budget or before 3 steps were timed."""
        if self.seconds is None or self.steps < 3:
            return None
        ends = self.epoch_end_s
        per_epoch = (sum(ends) / len(ends)) if ends else (self.eval_s or 0.0) / max(1, eval_every)
        now, end = elapsed, self.seconds - self.reserve_s()
        left = 0.0
        for j in range(stage, len(self.stages)):
            stage_end = end if j == len(self.stages) - 1 else min(end, self.stages[j]["until"] * self.seconds)
            left += max(0.0, stage_end - now) / (self.step_time(j) + per_epoch / steps_per_epoch)
            now = max(now, stage_end)
        return max(0, int(left))
