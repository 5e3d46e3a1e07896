"""Training: ``train(cfg) -> run directory``.

Reads top to bottom: ``train`` resolves the config (and the checkpoint to resume), then
``Trainer`` sets up the device (and DDP), the data (checked), the model and its training
step, and ``fit`` runs ``train_one_epoch`` until the epochs or the time budget end, with
validation and ``last.pt`` at epoch ends, then the final evaluation and ``metrics.json``.

The parts live in their own modules: the losses (``losses.py``), the one training
step (``step.py``), the lr schedule and time-budget plan (``schedule.py``), the
run's data (``data.py``) and the data order and seeding (``data/sampling.py``: a
resumed run skips the consumed batches without replaying the loader and, on CPU, reproduces
an uninterrupted run's losses exactly).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fcnseg.checkpoint import (
    PROGRESS,
    atomic_write,
    check_output_dir,
    ensure_output_dir,
    load_checkpoint,
    restore_training,
    save_checkpoint,
    training_state,
)
from fcnseg.config import TrainConfig, resolve_config, save_yaml
from fcnseg.data.sampling import EpochSampler
from fcnseg.errors import ConfigError, DataError, TrainingDiverged
from fcnseg.precision import resolve_device, resolve_precision
from fcnseg.training import distributed as ddp
from fcnseg.training.data import train_loader, training_data
from fcnseg.training.runlog import RunLog, diverged, find_resume, new_run_dir, remove_run
from fcnseg.training.schedule import LRSchedule, TimeBudget, stage_at
from fcnseg.training.step import build_model_for_training, build_train_step
from fcnseg.training.validation import Validation

log = logging.getLogger("fcnseg.train")
# curves.png (0.4-0.5 s a draw on an AMD EPYC [AVX2 only: no AVX-512, no native bf16]) is redrawn at a validation
# only this long after the last draw, and always at the end: runs that validate every few seconds do not pay it each time
CURVES_EVERY_S = 30.0


def train(cfg: dict | TrainConfig | None = None, *, config_file: str | os.PathLike | None = None, callback: Callable[[dict], None] | None = None, overwrite: bool = False, plan=None) -> Path:
    """Trains a model and returns its run directory.

    ``cfg``: TrainConfig fields to set (a dict of the options given, or a whole
    TrainConfig); ``config_file``: a YAML file of the same keys, applied before ``cfg``.
    With ``resume`` set the run continues from that checkpoint (``"auto"``: OUT/last.pt),
    under the checkpoint's config with ``config_file``/``cfg`` applied on top.
    ``callback(event)`` is called (on rank 0) with every event the run records in
    metrics.jsonl (``train``, ``eval``, ``stage``, ``end``) and with ``{"event":
    "checkpoint", "name", "path", "step", "epoch", "batch_in_epoch"}`` after each checkpoint
    write; an exception it raises stops the run there, as a crash would. ``plan``: the
    ``fcnseg.plan.Plan`` that ``cfg`` came from (``fcnseg train`` without a config), saved as
    plan.yaml in the run directory.

    The run directory gets config.yaml, last.pt, best.pt, metrics.jsonl, metrics.json,
    curves.png, samples/epoch_N.png and TensorBoard event files (rank 0 only). A fresh run
    into a folder that holds a run (``out``, or runs/``name``) is a ``ConfigError`` unless
    ``overwrite`` (then that run's files are removed first); ``resume`` continues one.
    """
    given = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg or {})
    resolved = resolve_config(given, config_file=config_file)
    ckpt = None
    if resolved.resume:
        path = find_resume(resolved)
        ckpt = load_checkpoint(path)
        explicit = {k: v for k, v in given.items() if k != "config"}
        resolved = resolve_config(explicit, config_file=config_file, base=ckpt["config"])
        resolved.resume = str(path)
        if "out" not in given:
            resolved.out = str(path.parent)
    try:
        trainer = Trainer(resolved, ckpt, callback, overwrite=overwrite)
        if plan is not None and trainer.main:
            text = plan.yaml()
            atomic_write(trainer.run_dir / "plan.yaml", lambda f: f.write(text.encode()), what="plan", fix="or train into another --out")
        return trainer.fit()
    finally:
        ddp.cleanup_distributed()


class Trainer:
    """One run: its setup in ``__init__``, the loop in ``fit``."""

    def __init__(self, cfg: TrainConfig, ckpt: dict | None = None, callback: Callable[[dict], None] | None = None, *, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.t_start = time.monotonic() - (ckpt.get("train_time_s", 0.0) if ckpt else 0.0)
        # when curves.png was last drawn (see draw); last.pt's last write: its step, its time
        self.curves_at, self.saved_step, self.saved_at = time.monotonic(), None, -math.inf
        device = resolve_device(cfg.device)
        self.dist = ddp.setup_distributed(device)
        self.device = ddp.local_device(device, self.dist)
        self.main = self.dist.is_main
        if not self.main:
            log.setLevel(logging.WARNING)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        fresh = not cfg.out and not cfg.name  # a timestamp folder, created here
        self.run_dir = Path(ddp.broadcast_object(str(new_run_dir(cfg, overwrite=overwrite, create=self.main))))
        cfg.out = str(self.run_dir)
        try:
            self.setup(cfg, ckpt, callback, overwrite)
        except BaseException:
            if fresh and self.main:  # a refused run leaves no empty folder behind
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise

    def setup(self, cfg: TrainConfig, ckpt: dict | None, callback: Callable[[dict], None] | None, overwrite: bool) -> None:
        check_output_dir(self.run_dir)
        self.data = data = training_data(cfg, main=self.main)
        self.sampler = EpochSampler(data.train, num_replicas=self.dist.world_size, rank=self.dist.rank, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.num_samples // cfg.batch_size // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{cfg.data}/{cfg.train_split} has {len(data.train)} images: fewer than one optimizer step of batch_size {cfg.batch_size} x accum_steps {cfg.accum_steps} x {self.dist.world_size} processes; lower --batch-size")
        self.model = build_model_for_training(cfg, data.num_classes, init_from=ckpt is None)
        # resolved (and logged) once the data and model are known to be good: a bad argument
        # is then the only line the run prints
        self.precision = resolve_precision(cfg.precision, self.device)
        weight = torch.tensor(data.class_weight, dtype=torch.float32, device=self.device) if data.class_weight else None
        self.step_fn = build_train_step(
            self.model, cfg, device=self.device, precision=self.precision, num_classes=data.num_classes,
            class_weight=weight, paste_classes=data.paste_classes, distributed=self.dist.enabled,
        )
        self.eval_model = self.step_fn.ema.module if self.step_fn.ema is not None else self.model
        self.validation = Validation(cfg, data, self.eval_model, device=self.device, precision=self.precision, distributed=self.dist.enabled, world_size=self.dist.world_size)
        self.planned_steps = cfg.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(self.step_fn.optimizer, base_lr=cfg.lr, total_steps=self.planned_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule)
        self.epoch = self.batch_in_epoch = self.step = 0
        self.best_miou, self.best, self.last_eval = -math.inf, None, None
        self.total_steps = self.planned_steps  # revised from the measured speed under max_minutes
        if ckpt is not None:  # resuming: the weights, optimizer, schedule, RNGs and the run's counters
            progress = restore_training(ckpt, self.model, self.step_fn, self.schedule)
            if not cfg.max_minutes:  # --epochs may have been changed for the rest of the run
                self.schedule.total_steps = progress["total_steps"] = self.planned_steps
            self.__dict__.update(progress)
            log.info("resumed at epoch %d, step %d (batch %d of the epoch)", self.epoch, self.step, self.batch_in_epoch)
        if self.main:
            ensure_output_dir(self.run_dir)
            if overwrite and ckpt is None:
                remove_run(self.run_dir)
            save_yaml(cfg, self.run_dir / "config.yaml")
        self.runlog = RunLog(self.run_dir if self.main else None, step=self.step, tensorboard=cfg.tensorboard, callback=callback)
        self.record = self.runlog.record
        ddp.barrier()

    # ---------------------------------------------------------------- the loop
    def fit(self) -> Path:
        cfg, data = self.cfg, self.data
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        log.info("%s/%s on %s (%d classes, %.1fM parameters) | %s %s | %d train / %d val images | batch %d x %d process(es) x %d accum | %d steps/epoch | %s",
                 cfg.model, cfg.backbone, cfg.data, data.num_classes, params, self.device, self.precision.name, len(data.train), len(data.val), cfg.batch_size, self.dist.world_size, cfg.accum_steps, self.steps_per_epoch, self.run_dir)
        self.budget = TimeBudget(cfg.max_minutes * 60.0 if cfg.max_minutes else None, data.stages, saves=2)  # last.pt, best.pt
        if self.budget.seconds is not None and cfg.eval_every:
            self.budget.eval_s = self.validation.probe_seconds()
        if "auto" in (cfg.eval_tta, cfg.eval_crf):  # the test-time choice at the end
            self.budget.choice_s = self.validation.choice_allowance(self.budget.seconds, self.budget.eval_s) or 0.0
        self.stage = stage_at(data.stages, self.progress())
        self.loader = train_loader(cfg, data, self.sampler, self.stage, self.device)
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.main, unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30)
        stop = None
        with logging_redirect_tqdm():
            try:
                while self.epoch < cfg.epochs and stop is None:
                    completed, stop = self.train_one_epoch()
                    if completed:
                        self.end_of_epoch()
            finally:  # an error then starts a line of its own
                self.bar.close()
            self.finish(stop or "epochs")
        return self.run_dir

    def train_one_epoch(self) -> tuple[bool, str | None]:
        """Runs the rest of the current epoch. Returns (whether it was completed, why the run
        stops: "max_minutes" or None). A progressive stage that ends inside the epoch
        switches the loader and the epoch goes on."""
        cfg, accum = self.cfg, self.cfg.accum_steps
        used = self.steps_per_epoch * accum
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * cfg.batch_size)
        self.step_fn.net.train()
        if cfg.freeze_backbone:
            self.model.backbone.eval()  # frozen BN statistics stay as loaded
        self.bar.set_description(f"epoch {self.epoch + 1}/{cfg.epochs}")
        loss_sum = torch.zeros((), device=self.device)
        self.schedule.apply(self.step)
        it = iter(self.loader)
        window, t0 = 0, time.monotonic()  # steps since the last log line; after the workers fork
        while self.batch_in_epoch < used:
            try:
                loss_sum += self.step_fn(next(it) for _ in range(accum))
            except DataError as e:  # a file gone or unreadable mid-run: stop at a resumable step
                self.stop_for_data(e, loss_sum, window, self.schedule.last_lr)
            self.step += 1
            self.batch_in_epoch += accum
            window += 1
            self.bar.update(1)
            step_lr = self.schedule.last_lr  # the rate this step ran at
            end_of_epoch = self.batch_in_epoch == used
            if self.step % cfg.log_every == 0 or end_of_epoch:
                self.log_window(window, time.monotonic() - t0, loss_sum, step_lr)
                loss_sum.zero_()
                window, t0 = 0, time.monotonic()
                self.revise_total_steps()
            self.schedule.apply(self.step)
            if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0 and not end_of_epoch:
                loss = float(ddp.all_reduce_sum(loss_sum.clone()).item()) if window else 0.0  # a host sync, only here
                if not math.isfinite(loss):  # never a checkpoint of diverged weights
                    self.stop_diverged(loss, window, step_lr)
                self.save("last.pt")
            turn = self.turn()
            if turn:
                if window:  # the steps since the last log line, on this stage's crops
                    self.log_window(window, time.monotonic() - t0, loss_sum, step_lr)
                if turn == "stage":
                    self.next_stage()  # the rest of the epoch runs on the new loader
                    return end_of_epoch, None
                return end_of_epoch, turn
        return True, None

    def turn(self) -> str | None:
        """After a step, what the run does next: "max_minutes" (stop: the budget's steps are
        done before the planned epochs', or the clock says the rest would not fit), "stage" (a
        progressive stage ends: switch the crops), or None (go on). Every rank agrees."""
        budget_done = self.total_steps < self.planned_steps and self.step >= self.total_steps
        if self.budget.seconds is not None and (budget_done or ddp.any_rank(self.dist, self.device, self.budget.out_of_time(self.elapsed(), self.stage))):
            return "max_minutes"
        if self.stage < len(self.data.stages) - 1 and ddp.any_rank(self.dist, self.device, stage_at(self.data.stages, self.progress()) != self.stage):
            return "stage"
        return None

    def next_stage(self) -> None:
        self.stage = max(self.stage + 1, stage_at(self.data.stages, self.progress()))
        stage = self.data.stages[self.stage]
        self.loader = None  # shuts the old workers down
        self.loader = train_loader(self.cfg, self.data, self.sampler, self.stage, self.device)
        self.budget.new_stage()  # the step time is measured again on the new crops
        log.info("step %d: stage %d of %d, crops %dx%d of frames scaled %.3g-%.3g", self.step, self.stage + 1, len(self.data.stages), *stage["crop"], *stage["scale"])
        self.record({"event": "stage", **self.position(stage=self.stage)})

    def log_window(self, steps: int, dt: float, loss_sum: torch.Tensor, lr: float) -> None:
        """Logs the mean loss and images/s of the last ``steps`` steps (``dt`` seconds; ``lr``:
        the rate of the last one); their time goes to the budget's plan."""
        self.budget.add_steps(steps, dt, self.stage)
        loss = float(ddp.all_reduce_sum(loss_sum.clone()).item()) / (steps * self.dist.world_size)
        if not math.isfinite(loss):
            self.stop_diverged(loss, steps, lr)
        ips = steps * self.cfg.batch_size * self.cfg.accum_steps * self.dist.world_size / max(dt, 1e-9)
        self.record({"event": "train", **self.position(loss=loss, lr=lr, images_per_s=ips)})
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", lr=f"{lr:.2e}")

    def stop_diverged(self, loss: float, steps: int, lr: float) -> None:
        """A NaN or infinite loss: nothing more is written but metrics.json, which says why;
        the checkpoints written before stay as they were."""
        result, message = diverged(self.run_dir, loss=loss, step=self.step, steps=steps, lr=lr, log_every=self.cfg.log_every)
        self.runlog.end({**result, "time_s": self.elapsed(), "run_dir": str(self.run_dir)}, self.position(stopped="non-finite loss"))
        raise TrainingDiverged(message)

    def stop_for_data(self, error: DataError, loss_sum: torch.Tensor, steps: int, lr: float) -> None:
        """A training file that disappeared or turned unreadable: last.pt at the last
        completed step (a position --resume continues from), then the error naming the file."""
        text = str(error).strip().splitlines()[-1].split("DataError: ", 1)[-1]  # from a loader worker: its last line
        if steps and not torch.isfinite(loss_sum).item():  # this process alone: the others did not fail
            self.stop_diverged(float(loss_sum), steps, lr)
        self.save("last.pt")
        last = self.run_dir / "last.pt"
        raise DataError(f"{text}; training stopped at step {self.step}, saved in {last}: restore the file (or fix the data: `fcnseg data check`) and continue with `fcnseg train --resume {last}`") from None

    def end_of_epoch(self) -> None:
        t0 = time.monotonic()
        self.epoch += 1
        self.batch_in_epoch = 0
        if self.cfg.eval_every and (self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs):
            self.validate()
        if self.budget.checkpoint_due(time.monotonic() - self.saved_at):
            self.save("last.pt")
        self.budget.epoch_end_s.append(time.monotonic() - t0)
        self.revise_total_steps()

    def validate(self) -> dict:
        t0 = time.monotonic()
        metrics = self.validation.evaluate()
        eval_s = self.budget.eval_s = time.monotonic() - t0
        summary = {k: metrics[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}
        event = {"event": "eval", **self.position(**summary, iou=metrics["iou"], eval_s=eval_s)}
        self.last_eval = event
        self.record(event)
        miou = metrics["mean_iou"]
        log.info("epoch %d step %d: val mean IU %.4f | pixel acc %.4f | mean acc %.4f | fw IU %.4f (%.1fs)", self.epoch, self.step, miou, summary["pixel_acc"], summary["mean_acc"], summary["fw_iou"], eval_s)
        if not math.isnan(miou) and miou > self.best_miou:
            self.best_miou = miou
            self.best = {**summary, "per_class": metrics["per_class"], "epoch": self.epoch, "step": self.step}
            self.save("best.pt")
        if self.main:
            t0 = time.monotonic()
            self.draw(f"epoch_{self.epoch}")
            self.budget.draw_s = time.monotonic() - t0
        return metrics

    def finish(self, stopped: str) -> None:
        cfg = self.cfg
        validated = bool(cfg.eval_every)
        fresh = validated and (self.last_eval is None or self.last_eval["step"] != self.step)
        if fresh:
            self.validate()
        test_time = None
        if "auto" in (cfg.eval_tta, cfg.eval_crf) and self.main:  # chosen with best.pt's weights
            earlier = validated and (self.best or {}).get("step") != self.step and (self.run_dir / "best.pt").is_file()
            test_time = self.validation.settle(self.run_dir, None if earlier else self.eval_model, self.budget.choice_s if self.budget.seconds else None, self.budget.eval_s)
        if not validated or fresh or test_time or self.saved_step != self.step:
            self.save("last.pt")
        if not validated:  # nothing to choose by: best.pt is the final model, for `fcnseg eval` to score
            self.save("best.pt")
        elapsed = self.elapsed()
        if not self.main:
            return
        ips = self.budget.steps * cfg.batch_size * cfg.accum_steps * self.dist.world_size / self.budget.step_s if self.budget.step_s else None
        final = {k: self.last_eval[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")} if validated else {}
        result = {
            "final": {**final, "epoch": self.step / self.steps_per_epoch, "step": self.step}, "validated": validated,
            "best": self.best, "stopped": stopped, "epochs": self.epoch, "steps": self.step, "time_s": elapsed,
            "train_images_per_s": ips, "device": str(self.device), "precision": self.precision.name,
            "world_size": self.dist.world_size, "run_dir": str(self.run_dir), "val_images_in_train": self.data.val_in_train,
            **({"test_time": test_time} if test_time else {}),
        }
        self.runlog.end(result, self.position(stopped=stopped))
        self.draw(None)
        if validated:
            log.info("done (%s) in %.0fs: final val mean IU %.4f, best %.4f at epoch %s | %s", stopped, elapsed, final["mean_iou"], self.best_miou, (self.best or {}).get("epoch"), self.run_dir)
        else:
            command = self.validation.command(self.run_dir / "best.pt")
            log.info("done (%s) in %.0fs, not validated (eval_every 0): best.pt is the final model; score it with `%s`", stopped, elapsed, command)

    # ---------------------------------------------------------------- time budget
    def position(self, **event) -> dict:
        """The run's place for an event of metrics.jsonl: epoch (fractional), step, time."""
        return {"epoch": self.step / self.steps_per_epoch, "step": self.step, **event, "time_s": self.elapsed()}

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def progress(self) -> float:
        """How far the run is, the clock of progressive stages: the fraction of max_minutes
        spent, else of the planned steps done."""
        seconds = self.budget.seconds
        return self.elapsed() / seconds if seconds is not None else self.step / max(1, self.planned_steps)

    def revise_total_steps(self) -> None:
        """Under max_minutes: the steps that fit in the time left, so the lr schedule ends
        when the budget does."""
        left = self.budget.steps_left(self.elapsed(), self.stage, steps_per_epoch=self.steps_per_epoch, eval_every=self.cfg.eval_every)
        if left is None:
            return
        total = int(ddp.broadcast_object(min(self.planned_steps, max(self.step + left, self.step + 1))))
        if total != self.total_steps:
            self.total_steps = self.bar.total = total
            self.bar.refresh()
        self.schedule.total_steps = total

    # ---------------------------------------------------------------- files
    def save(self, name: str) -> None:
        if not self.main:
            return
        progress = {key: getattr(self, key) for key in PROGRESS}
        state = training_state(self.model, self.step_fn, self.schedule, progress, config=self.cfg.to_dict(), data=self.data, train_time_s=self.elapsed())
        t0 = time.monotonic()
        save_checkpoint(state, self.run_dir / name)
        self.budget.save_s = max(self.budget.save_s, time.monotonic() - t0) if hasattr(self, "budget") else 0.0
        if name == "last.pt":  # (an epoch end writes it only when due: TimeBudget.checkpoint_due)
            self.saved_step, self.saved_at = self.step, time.monotonic()
        self.runlog.notify({"event": "checkpoint", "name": name, "path": str(self.run_dir / name), "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch})

    def draw(self, tag: str | None) -> None:
        """samples/<tag>.png (unless ``tag`` is None); curves.png at the end, else every CURVES_EVERY_S."""
        from fcnseg.inference.visualize import plot_curves

        if tag is not None:
            self.validation.draw(self.run_dir / "samples" / f"{tag}.png", f"{tag} (step {self.step})", self.model)
        if tag is None or time.monotonic() - self.curves_at >= CURVES_EVERY_S:
            plot_curves(self.runlog.events, self.run_dir / "curves.png")
            self.curves_at = time.monotonic()
