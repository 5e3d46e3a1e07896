"""What a training run scores and draws: its validation split through the same ``evaluate``
that ``fcnseg eval`` runs (the run's TTA and CRF included, so best.pt is chosen as it will be
scored), the time a validation takes (for the time budget), the sample pictures, and the
end-of-run test-time choice of ``eval_tta``/``eval_crf`` "auto" (its rule: test_time.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from fcnseg.config import TrainConfig
from fcnseg.inference.specs import run_crf, run_tta
from fcnseg.inference.verify import spread
from fcnseg.training.test_time import (
    CHOICE_IMAGES,
    CHOICE_SHARE,
    KEEP_BYTES,
    MIN_GAIN,
    choice_images,
    choice_options,
    choice_units,
    choose_test_time,
)

log = logging.getLogger("fcnseg.train")


class Validation:
    def __init__(self, cfg: TrainConfig, data, model: torch.nn.Module, *, device: torch.device, precision, distributed: bool, world_size: int) -> None:
        self.cfg, self.data, self.model = cfg, data, model
        self.device, self.precision = device, precision
        self.distributed, self.world_size = distributed, world_size

    def command(self, checkpoint: Path) -> str:
        """The ``fcnseg eval`` command that scores ``checkpoint`` on this run's validation data."""
        from fcnseg.training.data import val_source

        val = val_source(self.cfg)
        root = f" --data-root {val['root']}" if val["root"] else ""
        return f"fcnseg eval --checkpoint {checkpoint} --data {val['name']}{root} --split {self.cfg.val_split}"

    def evaluate(self, max_images: int | None = None, *, model: torch.nn.Module | None = None, dataset=None, tta="run", crf="run", distributed: bool | None = None,
                 reuse: dict | None = None) -> dict:
        """The run's validation (``tta``/``crf`` "run": the run's own, "auto" as one view at
        the training scale and no CRF until the end-of-run choice)."""
        from fcnseg.inference.evaluate import evaluate

        return evaluate(
            model or self.model, self.data.val if dataset is None else dataset, device=self.device, precision=self.precision,
            batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers,
            distributed=self.distributed if distributed is None else distributed, mean=self.data.mean, std=self.data.std, max_images=max_images,
            tta=run_tta(self.cfg.eval_tta, self.cfg.scale) if tta == "run" else tta, crf=run_crf(self.cfg.eval_crf) if crf == "run" else crf,
            reuse=reuse,
        )

    def choice_allowance(self, budget_s: float | None, eval_s: float | None) -> float | None:
        """Seconds the time budget holds back for the choice: its views on CHOICE_IMAGES images
        at the measured validation pace (``eval_s`` for the whole split), at most CHOICE_SHARE."""
        if budget_s is None:
            return None
        share = CHOICE_SHARE * budget_s
        if not eval_s:
            return share
        n = len(self.data.val)
        return min(share, choice_units(self.cfg.rotate90) * eval_s * min(CHOICE_IMAGES, n) / n)  # eval_s: one view at the training scale

    def settle(self, run_dir: Path, model: torch.nn.Module | None, allowance_s: float | None, eval_s: float | None = None) -> dict:
        """Chooses eval_tta/eval_crf "auto" (``choose``) with ``model`` (None: the weights in
        run_dir/best.pt) and writes the choice into the run's config, config.yaml and best.pt
        (when it exists; the checkpoints saved later hold it too). Returns ``choose``'s record."""
        from fcnseg.checkpoint import model_from_checkpoint, set_config
        from fcnseg.config import save_yaml

        best = run_dir / "best.pt"
        test_time = self.choose(model if model is not None else model_from_checkpoint(best).to(self.device), allowance_s, eval_s)
        for key, value in test_time["chosen"].items():
            setattr(self.cfg, key, value)
        save_yaml(self.cfg, run_dir / "config.yaml")
        if best.is_file():
            set_config(best, self.cfg.to_dict())
        return test_time

    def choose(self, model: torch.nn.Module, allowance_s: float | None, eval_s: float | None = None) -> dict:
        """The end-of-run choice of eval_tta/eval_crf (module docstring), scored with ``model``
        (best.pt's weights) on this process alone, on ``choice_images`` validation images
        (``eval_s``: the measured seconds of one validation). Returns metrics.json's ``test_time``."""
        ttas, crfs = choice_options(self.cfg)
        n = len(self.data.val)
        idx = spread(n, choice_images(n, eval_s, allowance_s, self.cfg.rotate90))
        subset = _Images(self.data.val, idx)
        # each set of views' probability maps, kept (float16, the latest sets within KEEP_BYTES)
        # so that the CRF refines the best set's maps instead of running its views again
        maps: dict[str | None, dict[int, torch.Tensor]] = {}
        h, w = np.asarray(subset[0][1]).shape[-2:] if len(subset) else (0, 0)
        keep = len(subset) * self.data.num_classes * h * w * 2 <= KEEP_BYTES  # a set's maps (a set larger is not kept)

        def score(tta, crf) -> float:
            reuse = maps.get(tta) if crf else ({} if keep else None)
            result = self.evaluate(model=model, dataset=subset, tta=tta, crf=crf, distributed=False, reuse=reuse)
            if reuse is not None and crf is None:
                maps[tta] = reuse
                while maps and sum(t.numel() * 2 for m in maps.values() for t in m.values()) > KEEP_BYTES:
                    maps.pop(next(iter(maps)))  # the oldest (cheapest) set first
            return result["mean_iou"]

        best, table = choose_test_time(ttas, crfs, score, allowance_s=allowance_s, kept=lambda tta: tta in maps)
        for row in table:
            log.info("test-time choice: tta %s, crf %s: %s", row["tta"] or "none", row["crf"] or "none",
                     f"val mean IU {100 * row['mean_iou']:.2f} on {len(idx)} images ({row['seconds']:.1f}s)" if "mean_iou" in row else row["skipped"])
        log.info("test-time choice: tta %s, crf %s (kept only where +%.1f mean IU paid)", best["tta"] or "none", best["crf"] or "none", 100 * MIN_GAIN)
        return {"chosen": {"eval_tta": best["tta"] or "none", "eval_crf": best["crf"] or "none"}, "images": len(idx), "allowance_s": allowance_s, "rows": table}

    @torch.no_grad()
    def probe_seconds(self) -> float:
        """Seconds a full validation should take, timed on a few val images through the same
        evaluate() call (first-call overheads included, so it errs on the long side)."""
        n = len(self.data.val)
        k = min(n, 4 * self.world_size)
        with torch.random.fork_rng(devices=[]):  # the probe must not shift the run's RNG
            t0 = time.monotonic()
            self.evaluate(max_images=k)
            dt = time.monotonic() - t0
        estimate = dt * n / k + 1.0
        log.info("time budget %.1f min: validation takes ~%.0fs (timed on %d images)", self.cfg.max_minutes, estimate, k)
        return estimate

    def draw(self, path: Path, title: str, training_model: torch.nn.Module) -> None:
        """samples/<tag>.png: image | truth | prediction of the first ``num_samples`` val images."""
        from fcnseg.inference.visualize import draw_samples

        n = min(self.cfg.num_samples, len(self.data.val))
        if not n:
            return
        try:
            draw_samples(
                self.model, self.data.val, n, path, mean=self.data.mean, std=self.data.std,
                palette=self.data.palette, device=self.device, precision=self.precision, title=title,
            )
        finally:
            if self.model is training_model:
                training_model.train()


class _Images:
    """The images ``idx`` of a dataset, with its attributes (classes, palette, ...)."""

    def __init__(self, dataset, idx: list[int]) -> None:
        self.dataset, self.idx = dataset, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        return self.dataset[self.idx[i]]

    def load(self, i: int):
        return self.dataset.load(self.idx[i])

    def __getattr__(self, name: str):
        return getattr(self.dataset, name)
