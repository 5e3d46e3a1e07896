"""Checkpoints: atomic writes, and rebuilding a model from one.

A checkpoint is a dict (docs/design.md): ``model`` (state dict, unwrapped from DDP and
torch.compile), ``model_config`` (``build_model`` kwargs), ``optimizer``, ``scheduler``,
``scaler``, ``epoch``, ``step``, ``best_miou``, ``config`` (resolved train config),
``classes``, ``palette``, ``mean``, ``std``, ``rng``. With ``ema`` training, ``model`` is
the weight average (what validation scored) and ``train_model`` the optimiser's weights,
with ``ema_updates`` the number of steps averaged (for resuming).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import WeightsError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Writes to a temporary file in the same folder, fsyncs, then renames over ``path``:
    a crash at any moment leaves either the old or the new file, never a broken one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} not found; pass the .pt file a training run wrote (RUN/best.pt or RUN/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise WeightsError(f"cannot read checkpoint {path}: {e}; the file is damaged or not an fcnseg checkpoint") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise WeightsError(f"{path} is not an fcnseg checkpoint (no 'model'/'model_config' entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike) -> nn.Module:
    """Rebuilds the model a checkpoint describes and loads its weights strictly."""
    from fcnseg.models import build_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model

