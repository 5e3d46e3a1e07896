"""Training: ``train(cfg) -> run directory``.

Reads top to bottom: ``train`` resolves the config (and the checkpoint to resume), then
``Trainer`` sets up the device (and DDP), the data (checked), the model and its training
step, and ``fit`` runs ``train_one_epoch`` until the epochs or the time budget end, with
validation and ``last.pt`` at epoch ends, then the final evaluation and ``metrics.json``.

The parts live in their own modules: the losses (``engine/losses.py``), the one training
step (``engine/step.py``), the lr schedule and time-budget plan (``engine/schedule.py``), the
run's data (``engine/data.py``) and the data order and seeding (``data/sampling.py``: a
resumed run skips the consumed batches without replaying the loader and, on CPU, reproduces
an uninterrupted run's losses exactly).
"""

from __future__ import annotations

import contextlib
import json
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

from fcnseg.data.sampling import EpochSampler, rng_state, set_rng_state
from fcnseg.engine import distributed as ddp
from fcnseg.engine.checkpoint import (
    atomic_write,
    check_output_dir,
    ensure_output_dir,
    load_checkpoint,
    save_checkpoint,
)
from fcnseg.engine.config import TrainConfig, resolve_config, save_yaml
from fcnseg.engine.data import train_loader, training_data, val_source
from fcnseg.engine.precision import resolve_device, resolve_precision
from fcnseg.engine.runlog import RunLog, find_resume, new_run_dir, remove_run
from fcnseg.engine.schedule import LRSchedule, TimeBudget, stage_at
from fcnseg.engine.step import build_model_for_training, build_train_step
from fcnseg.errors import ConfigError, DataError, TrainingDiverged

log = logging.getLogger("fcnseg.train")


def train(
    cfg: dict | TrainConfig | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    callback: Callable[[dict], None] | None = None,
    overwrite: bool = False,
    plan=None,
) -> Path:
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
    if resolved["resume"]:
        path = find_resume(resolved)
        ckpt = load_checkpoint(path)
        explicit = {k: v for k, v in given.items() if k != "config"}
        resolved = resolve_config(explicit, config_file=config_file, base=ckpt["config"])
        resolved["resume"] = str(path)
        if "out" not in given:
            resolved["out"] = str(path.parent)
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

    def __init__(self, cfg: dict, ckpt: dict | None = None, callback: Callable[[dict], None] | None = None, *, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.t_start = time.monotonic() - (ckpt.get("train_time_s", 0.0) if ckpt else 0.0)
        device = resolve_device(cfg["device"])
        self.dist = ddp.setup_distributed(device)
        self.device = ddp.local_device(device, self.dist)
        self.main = self.dist.is_main
        if not self.main:
            log.setLevel(logging.WARNING)
        torch.manual_seed(cfg["seed"])
        random.seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        fresh = not cfg["out"] and not cfg["name"]  # a timestamp folder, created here
        self.run_dir = Path(ddp.broadcast_object(str(new_run_dir(cfg, overwrite=overwrite, create=self.main))))
        cfg["out"] = str(self.run_dir)
        try:
            self.setup(cfg, ckpt, callback, overwrite)
        except BaseException:
            if fresh and self.main:  # a refused run leaves no empty folder behind
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise

    def setup(self, cfg: dict, ckpt: dict | None, callback: Callable[[dict], None] | None, overwrite: bool) -> None:
        check_output_dir(self.run_dir)

        # data
        self.data = data = training_data(cfg, main=self.main)
        self.sampler = EpochSampler(data.train, num_replicas=self.dist.world_size, rank=self.dist.rank, seed=cfg["seed"])
        self.steps_per_epoch = self.sampler.num_samples // cfg["batch_size"] // cfg["accum_steps"]
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{cfg['data']}/{cfg['train_split']} has {len(data.train)} images: fewer than one "
                f"optimizer step of batch_size {cfg['batch_size']} x accum_steps {cfg['accum_steps']} x "
                f"{self.dist.world_size} processes; lower --batch-size"
            )
        # model and step
        self.model = build_model_for_training(cfg, data.num_classes, init_from=ckpt is None)
        # resolved (and logged) once the data and model are known to be good: a bad argument
        # is then the only line the run prints
        self.precision = resolve_precision(cfg["precision"], self.device)
        weight = torch.tensor(data.class_weight, dtype=torch.float32, device=self.device) if data.class_weight else None
        self.step_fn = build_train_step(
            self.model, cfg, device=self.device, precision=self.precision, num_classes=data.num_classes,
            class_weight=weight, paste_classes=data.paste_classes, distributed=self.dist.enabled,
        )
        self.eval_model = self.step_fn.ema.module if self.step_fn.ema is not None else self.model
        self.planned_steps = cfg["epochs"] * self.steps_per_epoch
        self.schedule = LRSchedule(self.step_fn.optimizer, base_lr=cfg["lr"], total_steps=self.planned_steps, warmup_steps=cfg["warmup_steps"], schedule=cfg["schedule"])
        self.epoch = self.batch_in_epoch = self.step = 0
        self.best_miou, self.best, self.last_eval = -math.inf, None, None
        self.total_steps = self.planned_steps  # revised from the measured speed under max_minutes
        if ckpt is not None:
            self.restore(ckpt)
        if self.main:
            ensure_output_dir(self.run_dir)
            if overwrite and ckpt is None:
                remove_run(self.run_dir)
            save_yaml(cfg, self.run_dir / "config.yaml")
        self.runlog = RunLog(self.run_dir if self.main else None, step=self.step, tensorboard=cfg["tensorboard"], callback=callback)
        self.record = self.runlog.record
        ddp.barrier()

    def restore(self, ckpt: dict) -> None:
        step, cfg = self.step_fn, self.cfg
        self.model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        if step.ema is not None:
            if ckpt.get("ema_updates"):
                step.ema.module.load_state_dict(ckpt["model"])
                step.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
            else:  # resumed from a run without ema: the average starts here
                log.info("ema: the checkpoint has no weight average; it starts from the resumed weights")
        if step.net.aux_head is not None and ckpt.get("aux_head") is not None:
            step.net.aux_head.load_state_dict(ckpt["aux_head"])
        step.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if not cfg["max_minutes"]:  # --epochs may have been changed for the rest of the run
            self.schedule.total_steps = self.planned_steps
        if ckpt.get("scaler"):
            step.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        if cfg["max_minutes"]:  # older checkpoints: the schedule's length was the step count
            self.total_steps = int(ckpt.get("total_steps", ckpt["scheduler"]["total_steps"]))
        self.best_miou = ckpt.get("best_miou", -math.inf)
        self.best, self.last_eval = ckpt.get("best"), ckpt.get("last_eval")
        set_rng_state(ckpt["rng"])
        log.info("resumed at epoch %d, step %d (batch %d of the epoch)", self.epoch, self.step, self.batch_in_epoch)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> Path:
        cfg, data = self.cfg, self.data
        log.info(
            "%s/%s on %s (%d classes, %.1fM parameters) | %s %s | %d train / %d val images | "
            "batch %d x %d process(es) x %d accum | %d steps/epoch | %s",
            cfg["model"], cfg["backbone"], cfg["data"], data.num_classes, sum(p.numel() for p in self.model.parameters()) / 1e6,
            self.device, self.precision.name, len(data.train), len(data.val), cfg["batch_size"], self.dist.world_size,
            cfg["accum_steps"], self.steps_per_epoch, self.run_dir,
        )
        self.budget = TimeBudget(cfg["max_minutes"] * 60.0 if cfg["max_minutes"] else None, data.stages, saves=1 if cfg["eval_every"] else 2)
        if self.budget.seconds is not None and cfg["eval_every"]:
            self.budget.eval_s = self.probe_eval_time()
        self.stage = stage_at(data.stages, self.progress())
        self.loader = train_loader(cfg, data, self.sampler, self.stage, self.device)
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.main, unit="step", dynamic_ncols=True,
            file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        stop = None
        with logging_redirect_tqdm():
            try:
                while self.epoch < cfg["epochs"] and stop is None:
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
        cfg, accum = self.cfg, self.cfg["accum_steps"]
        used = self.steps_per_epoch * accum
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * cfg["batch_size"])
        self.step_fn.net.train()
        if cfg["freeze_backbone"]:
            self.model.backbone.eval()  # frozen BN statistics stay as loaded
        self.bar.set_description(f"epoch {self.epoch + 1}/{cfg['epochs']}")
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
            if self.step % cfg["log_every"] == 0 or end_of_epoch:
                self.log_window(window, time.monotonic() - t0, loss_sum, step_lr)
                loss_sum.zero_()
                window, t0 = 0, time.monotonic()
                self.revise_total_steps()
            self.schedule.apply(self.step)
            if cfg["ckpt_every_steps"] and self.step % cfg["ckpt_every_steps"] == 0 and not end_of_epoch:
                self.check_finite(loss_sum, window, step_lr)  # never a checkpoint of diverged weights
                self.save("last.pt")
            # the budget's stop: its steps are done before the planned epochs' (reaching the planned
            # steps is the epochs' own end), or the clock says the rest would not fit
            budget_done = self.total_steps < self.planned_steps and self.step >= self.total_steps
            stop = "max_minutes" if self.budget.seconds is not None and (budget_done or self.any_rank(self.budget.out_of_time(self.elapsed(), self.stage))) else None
            if stop or (self.stage < len(self.data.stages) - 1 and self.any_rank(stage_at(self.data.stages, self.progress()) != self.stage)):
                if window:  # the steps since the last log line, on this stage's crops
                    self.log_window(window, time.monotonic() - t0, loss_sum, step_lr)
                if not stop:
                    self.next_stage()  # the rest of the epoch runs on the new loader
                return end_of_epoch, stop
        return True, None

    def next_stage(self) -> None:
        self.stage = max(self.stage + 1, stage_at(self.data.stages, self.progress()))
        stage = self.data.stages[self.stage]
        self.loader = None  # shuts the old workers down
        self.loader = train_loader(self.cfg, self.data, self.sampler, self.stage, self.device)
        self.budget.new_stage()  # the step time is measured again on the new crops
        log.info("step %d: stage %d of %d, crops %dx%d of frames scaled %.3g-%.3g", self.step, self.stage + 1, len(self.data.stages), *stage["crop"], *stage["scale"])
        self.record({"event": "stage", "epoch": self.step / self.steps_per_epoch, "step": self.step, "stage": self.stage, "time_s": self.elapsed()})

    def log_window(self, steps: int, dt: float, loss_sum: torch.Tensor, lr: float) -> None:
        """Logs the mean loss and images/s of the last ``steps`` steps (``dt`` seconds; ``lr``:
        the rate of the last one); their time goes to the budget's plan."""
        self.budget.add_steps(steps, dt, self.stage)
        loss = float(ddp.all_reduce_sum(loss_sum.clone()).item()) / (steps * self.dist.world_size)
        if not math.isfinite(loss):
            self.stop_diverged(loss, steps, lr)
        ips = steps * self.cfg["batch_size"] * self.cfg["accum_steps"] * self.dist.world_size / max(dt, 1e-9)
        self.record({"event": "train", "epoch": self.step / self.steps_per_epoch, "step": self.step, "loss": loss, "lr": lr, "images_per_s": ips, "time_s": self.elapsed()})
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", lr=f"{lr:.2e}")

    def check_finite(self, loss_sum: torch.Tensor, steps: int, lr: float) -> None:
        """Stops the run (TrainingDiverged) if the loss of the last ``steps`` steps is not
        finite; a host sync, done only before a checkpoint write between log lines."""
        if steps:
            loss = float(ddp.all_reduce_sum(loss_sum.clone()).item())
            if not math.isfinite(loss):
                self.stop_diverged(loss, steps, lr)

    def stop_diverged(self, loss: float, steps: int, lr: float) -> None:
        """A NaN or infinite loss: nothing more is written but metrics.json, which says why;
        the checkpoints written before stay as they were."""
        first = self.step - steps + 1
        at = f"step {self.step}" if steps == 1 else f"steps {first}-{self.step} (the loss is read every {self.cfg['log_every']} steps)"
        good = [(p, load_checkpoint(p)["step"]) for p in (self.run_dir / "last.pt", self.run_dir / "best.pt") if p.is_file()]
        if good:
            path, k = max(good, key=lambda g: g[1])
            kept = f"the last good checkpoint {path} (step {k}) is kept as it was; lower --lr (or set --clip-grad) and train again, or --resume {path} --lr SMALLER"
        else:
            path, k, kept = None, None, "no checkpoint was written before it; lower --lr (or set --clip-grad) and train again"
        if self.main:
            result = {"stopped": "non-finite loss", "loss": str(loss), "step": self.step, "first_step": first, "lr": lr,
                      "last_good_checkpoint": str(path) if path else None, "last_good_step": k, "time_s": self.elapsed(), "run_dir": str(self.run_dir)}
            (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
            self.record({"event": "end", "epoch": self.step / self.steps_per_epoch, "step": self.step, "stopped": "non-finite loss", "time_s": self.elapsed()})
            self.runlog.close()
        raise TrainingDiverged(f"the training loss became {loss} at {at}, lr {lr:.3g}: the run diverged and stopped; {kept}")

    def stop_for_data(self, error: DataError, loss_sum: torch.Tensor, steps: int, lr: float) -> None:
        """A training file that disappeared or turned unreadable: last.pt at the last
        completed step (a position --resume continues from), then the error naming the file."""
        text = str(error)
        if "Original Traceback" in text:  # raised in a loader worker: its last line is the DataError
            text = [line for line in text.splitlines() if line.strip()][-1].split("DataError: ", 1)[-1]
        if steps and not torch.isfinite(loss_sum).item():  # this process alone: the others did not fail
            self.stop_diverged(float(loss_sum), steps, lr)
        self.save("last.pt")
        last = self.run_dir / "last.pt"
        raise DataError(f"{text}; training stopped at step {self.step}, saved in {last}: restore the file (or fix the data: `fcnseg data check`) and continue with `fcnseg train --resume {last}`") from None

    def end_of_epoch(self) -> None:
        t0 = time.monotonic()
        self.epoch += 1
        self.batch_in_epoch = 0
        if self.cfg["eval_every"] and (self.epoch % self.cfg["eval_every"] == 0 or self.epoch == self.cfg["epochs"]):
            self.validate()
        self.save("last.pt")
        self.budget.epoch_end_s.append(time.monotonic() - t0)
        self.revise_total_steps()

    def evaluate(self, max_images: int | None = None) -> dict:
        from fcnseg.engine.evaluate import evaluate

        return evaluate(
            self.eval_model, self.data.val, device=self.device, precision=self.precision,
            batch_size=self.cfg["eval_batch_size"], num_workers=self.cfg["workers"],
            distributed=self.dist.enabled, mean=self.data.mean, std=self.data.std, max_images=max_images,
            tta=self.cfg["eval_tta"], crf=self.cfg["eval_crf"],  # best.pt is chosen as `fcnseg eval` will score it
        )

    def validate(self) -> dict:
        t0 = time.monotonic()
        metrics = self.evaluate()
        eval_s = self.budget.eval_s = time.monotonic() - t0
        summary = {k: metrics[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}
        event = {"event": "eval", "epoch": self.step / self.steps_per_epoch, "step": self.step, **summary, "iou": metrics["iou"], "eval_s": eval_s, "time_s": self.elapsed()}
        self.last_eval = event
        self.record(event)
        miou = metrics["mean_iou"]
        log.info(
            "epoch %d step %d: val mean IU %.4f | pixel acc %.4f | mean acc %.4f | fw IU %.4f (%.1fs)",
            self.epoch, self.step, miou, summary["pixel_acc"], summary["mean_acc"], summary["fw_iou"], eval_s,
        )
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
        validated = bool(cfg["eval_every"])
        if not validated:  # nothing to choose by: best.pt is the final model, for `fcnseg eval` to score
            self.save("last.pt")
            self.save("best.pt")
        elif self.last_eval is None or self.last_eval["step"] != self.step:
            self.validate()
            self.save("last.pt")
        elapsed = self.elapsed()
        if not self.main:
            return
        b = self.budget
        ips = b.steps * cfg["batch_size"] * cfg["accum_steps"] * self.dist.world_size / b.step_s if b.step_s else None
        final = {k: self.last_eval[k] for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")} if validated else {}
        result = {
            "final": {**final, "epoch": self.step / self.steps_per_epoch, "step": self.step}, "validated": validated,
            "best": self.best, "stopped": stopped, "epochs": self.epoch, "steps": self.step, "time_s": elapsed,
            "train_images_per_s": ips, "device": str(self.device), "precision": self.precision.name,
            "world_size": self.dist.world_size, "run_dir": str(self.run_dir), "val_images_in_train": self.data.val_in_train,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        self.record({"event": "end", "epoch": self.step / self.steps_per_epoch, "step": self.step, "stopped": stopped, "time_s": elapsed})
        from fcnseg.engine.visualize import plot_curves

        plot_curves(self.runlog.events, self.run_dir / "curves.png")
        self.runlog.close()
        if validated:
            log.info(
                "done (%s) in %.0fs: final val mean IU %.4f, best %.4f at epoch %s | %s",
                stopped, elapsed, final["mean_iou"], self.best_miou, (self.best or {}).get("epoch"), self.run_dir,
            )
        else:
            val = val_source(cfg)
            command = f"fcnseg eval --checkpoint {self.run_dir / 'best.pt'} --data {val['name']}"
            command += (f" --data-root {val['root']}" if val["root"] else "") + f" --split {cfg['val_split']}"
            log.info("done (%s) in %.0fs, not validated (eval_every 0): best.pt is the final model; score it with `%s`", stopped, elapsed, command)

    # ---------------------------------------------------------------- time budget
    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def progress(self) -> float:
        """How far the run is, the clock of progressive stages: the fraction of max_minutes
        spent, else of the planned steps done."""
        seconds = self.budget.seconds
        return self.elapsed() / seconds if seconds is not None else self.step / max(1, self.planned_steps)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is on one (every rank must stop or switch at the same step)."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        return bool(ddp.all_reduce_sum(t).item())

    def revise_total_steps(self) -> None:
        """Under max_minutes: the steps that fit in the time left, so the lr schedule ends
        when the budget does."""
        left = self.budget.steps_left(self.elapsed(), self.stage, steps_per_epoch=self.steps_per_epoch, eval_every=self.cfg["eval_every"])
        if left is None:
            return
        total = int(ddp.broadcast_object(min(self.planned_steps, max(self.step + left, self.step + 1))))
        if total != self.total_steps:
            self.total_steps = self.bar.total = total
            self.bar.refresh()
        self.schedule.total_steps = total

    @torch.no_grad()
    def probe_eval_time(self) -> float:
        """Seconds a full validation should take, timed on a few val images through the same
        evaluate() call (first-call overheads included, so it errs on the long side)."""
        n = len(self.data.val)
        k = min(n, 4 * self.dist.world_size)
        with torch.random.fork_rng(devices=[]):  # the probe must not shift the run's RNG
            t0 = time.monotonic()
            self.evaluate(max_images=k)
            dt = time.monotonic() - t0
        estimate = dt * n / k + 1.0
        log.info("time budget %.1f min: validation takes ~%.0fs (timed on %d images)", self.cfg["max_minutes"], estimate, k)
        return estimate

    # ---------------------------------------------------------------- files
    def save(self, name: str) -> None:
        if not self.main:
            return
        step, data = self.step_fn, self.data
        state = {
            "model": self.eval_model.state_dict(),  # what validation scored: the average under ema
            "train_model": self.model.state_dict() if step.ema is not None else None,
            "ema_updates": int(step.ema.n_averaged) if step.ema is not None else 0,
            "model_config": dict(self.model.config),
            "aux_head": step.net.aux_head.state_dict() if step.net.aux_head is not None else None,
            "optimizer": step.optimizer.state_dict(), "scheduler": self.schedule.state_dict(), "scaler": step.scaler.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step, "total_steps": self.total_steps,
            "best_miou": self.best_miou, "best": self.best, "last_eval": self.last_eval, "config": dict(self.cfg),
            "classes": list(data.classes), "palette": data.palette.tolist(), "mean": data.mean, "std": data.std,
            "rng": rng_state(), "train_time_s": self.elapsed(),
        }
        t0 = time.monotonic()
        save_checkpoint(state, self.run_dir / name)
        self.budget.save_s = max(self.budget.save_s, time.monotonic() - t0) if hasattr(self, "budget") else 0.0
        self.runlog.notify({"event": "checkpoint", "name": name, "path": str(self.run_dir / name), "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch})

    def draw(self, tag: str) -> None:
        """samples/<tag>.png (image | truth | prediction) and curves.png."""
        from fcnseg.engine.visualize import draw_samples, plot_curves

        n = min(self.cfg["num_samples"], len(self.data.val))
        if n:
            try:
                draw_samples(
                    self.eval_model, self.data.val, n, self.run_dir / "samples" / f"{tag}.png", mean=self.data.mean, std=self.data.std,
                    palette=self.data.palette, device=self.device, precision=self.precision, title=f"{tag} (step {self.step})",
                )
            finally:
                if self.eval_model is self.model:
                    self.model.train()
        plot_curves(self.runlog.events, self.run_dir / "curves.png")
