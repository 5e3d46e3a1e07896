"""Checkpoints: the schema, atomic writes, safe reads, rebuilding a model from one; output folders.

A checkpoint is a dict (docs/design.md), written by ``training_state`` and read back into a
run by ``restore_training`` (the two are the schema): ``model`` (state dict, unwrapped from
DDP and torch.compile), ``model_config`` (``build_model`` kwargs), ``optimizer``,
``scheduler``, ``scaler``, ``aux_head``, the run's position (``PROGRESS``: ``epoch``,
``batch_in_epoch``, ``step``, ``total_steps``, ``best_miou``, ``best``, ``last_eval``),
``config`` (the resolved TrainConfig as a dict), ``classes``, ``palette``, ``mean``, ``std``,
``rng``, ``train_time_s``. With ``ema`` training, ``model`` is the weight average (what
validation scored) and ``train_model`` the optimiser's weights, with ``ema_updates`` the
number of steps averaged (for resuming).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import glob
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import IO

import numpy as np
import torch
from torch import nn

from fcnseg.errors import ConfigError, OutputError, WeightsError

log = logging.getLogger("fcnseg.checkpoint")


PROGRESS = ("epoch", "batch_in_epoch", "step", "total_steps", "best_miou", "best", "last_eval")


def training_state(model: nn.Module, step, schedule, progress: dict, *, config: dict, data, train_time_s: float) -> dict:
    """The checkpoint of a training run: ``model`` (the trained module), ``step`` (its
    ``TrainStep``: optimizer, scaler, weight average, auxiliary head), ``schedule`` (its
    ``LRSchedule``), ``progress`` (the ``PROGRESS`` counters), ``data`` (classes, palette,
    mean, std)."""
    from fcnseg.data.sampling import rng_state

    ema = step.ema
    return {
        "model": (ema.module if ema is not None else model).state_dict(),  # what validation scored
        "train_model": model.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,
        "model_config": dict(model.config),
        "aux_head": step.net.aux_head.state_dict() if step.net.aux_head is not None else None,
        "optimizer": step.optimizer.state_dict(), "scheduler": schedule.state_dict(), "scaler": step.scaler.state_dict(),
        **{key: progress[key] for key in PROGRESS},
        "config": config, "classes": list(data.classes), "palette": data.palette.tolist(), "mean": data.mean, "std": data.std,
        "rng": rng_state(), "train_time_s": train_time_s,
    }


def restore_training(ckpt: dict, model: nn.Module, step, schedule) -> dict:
    """Loads a ``training_state`` checkpoint into a run's model, step and schedule and the
    process's RNGs; returns its ``PROGRESS`` counters (older checkpoints: defaults)."""
    from fcnseg.data.sampling import set_rng_state

    model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
    if step.ema is not None:
        if ckpt.get("ema_updates"):
            step.ema.module.load_state_dict(ckpt["model"])
            step.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
        else:  # resumed from a run without ema: the average starts here
            log.info("ema: the checkpoint has no weight average; it starts from the resumed weights")
    if step.net.aux_head is not None and ckpt.get("aux_head") is not None:
        step.net.aux_head.load_state_dict(ckpt["aux_head"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return {
        "epoch": int(ckpt["epoch"]), "step": int(ckpt["step"]), "batch_in_epoch": int(ckpt.get("batch_in_epoch", 0)),
        # older checkpoints: the schedule's length was the step count
        "total_steps": int(ckpt.get("total_steps", ckpt["scheduler"]["total_steps"])),
        "best_miou": ckpt.get("best_miou", -float("inf")), "best": ckpt.get("best"), "last_eval": ckpt.get("last_eval"),
    }


def set_config(path: str | os.PathLike, config: dict) -> None:
    """Rewrites the run config inside the checkpoint ``path`` (atomically)."""
    ckpt = load_checkpoint(path)
    ckpt["config"] = config
    save_checkpoint(ckpt, path)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def plain(obj):
    """``obj`` with numpy arrays and scalars turned into lists and Python numbers and paths
    into strings, so that ``torch.load(weights_only=True)`` reads it back with nothing
    allow-listed. Containers are copied only where something inside changed (state dicts keep
    their ``_metadata``); tensors are never copied."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        new = {k: plain(v) for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(new)
        return out
    if isinstance(obj, list | tuple):
        new = [plain(v) for v in obj]
        if all(a is b for a, b in zip(new, obj, strict=True)):
            return obj
        return type(obj)(new) if type(obj) in (list, tuple) else obj
    return obj


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Writes ``plain(state)`` to a temporary file in the same folder, fsyncs it, renames it
    over ``path`` and fsyncs the folder: a crash at any moment leaves either the old or the
    new file, never a broken one. A failed write (disk full, read-only folder) removes the
    temporary file, leaves the previous ``path`` as it was and raises ``OutputError``.
    Temporary files (``NAME.<host>~<pid>.XXXX.tmp``) of earlier writes cut short (a kill -9)
    are removed after a good write when their process is gone; another writer's are left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{_writer_id()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _chmod_like_open(f.fileno())
            torch.save(plain(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os_error = _os_error(e)
        if os_error is not None:
            raise _write_error(path, os_error) from None
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        if _writer_gone(stale.name[len(path.name) + 1 :]):
            with contextlib.suppress(OSError):
                stale.unlink()


def _writer_id() -> str:
    """Who writes a temporary file: ``<host>~<pid>`` (host without dots)."""
    return f"{socket.gethostname().replace('.', '_')}~{os.getpid()}"


def _writer_gone(rest: str) -> bool:
    """True for a temporary file (``rest``: its name after ``NAME.``) left by a process of
    this host that is no longer running (a kill -9 cut its write short). Another live
    writer's file, another host's, or a name of unknown form is left alone."""
    writer = rest.split(".", 1)[0]
    host, _, pid = writer.rpartition("~")
    if host != socket.gethostname().replace(".", "_") or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # ours: removed by the write that made it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, what: str = "file", fix: str = "", fsync: bool = False) -> Path:
    """Calls ``write(f)`` on a temporary file beside ``path`` (``.NAME.<pid>.XXXX.tmp``),
    then renames it over ``path``: a reader (or a re-run with ``--skip-existing``) never
    sees half a file. A failed write removes the temporary file and raises ``OutputError``
    naming ``path`` (``what``: how the message calls it) with ``fix`` added to the advice."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e, what=what, fix=fix) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _chmod_like_open(f.fileno())
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os_error = _os_error(e)
        if os_error is not None:
            raise write_error(path, os_error, what=what, fix=fix) from None
        raise
    return path


def write_error(path: str | os.PathLike, e: OSError, *, what: str = "file", fix: str = "") -> OutputError:
    """One line for a failed write: the path, the system's reason and what to do."""
    path = Path(path)
    extra = f" ({fix})" if fix else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"cannot write {what} {path}: the disk is full ({e.strerror}); free space in {path.parent}{extra}")
    if e.errno == errno.ENOENT and not path.parent.is_dir():
        return OutputError(f"cannot write {what} {path}: the folder {path.parent} does not exist; create it{extra}")
    return OutputError(f"cannot write {what} {path}: {e.strerror or e}; make {path.parent} writable{extra}")


def check_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Raises ``OutputError`` when ``path`` cannot become a folder (it, or a parent, is a
    file); nothing is created. For checking arguments before any work."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"is under {p}, which is a file"
                raise OutputError(f"{option} {path} {what}; pass a folder (new or existing) for the outputs")
            return path
    return path


def ensure_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """``path`` as a folder, created with its parents; ``OutputError`` when it cannot be."""
    path = check_output_dir(path, option=option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {option} {path}: {e.strerror or e}; pass a folder you can write to") from None
    return path


def _chmod_like_open(fd: int) -> None:
    """mkstemp makes the file 0600; give it the mode ``open()`` would (0666 less the umask),
    so that a checkpoint is as readable as the run's other files."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError, AttributeError):  # no fchmod on Windows
        os.fchmod(fd, 0o666 & ~mask)


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save reports a failed write as a RuntimeError raised
    while handling the file's OSError."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _fsync_dir(folder: Path) -> None:
    """Makes the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path: Path, e: OSError) -> OutputError:
    kept = f"the previous {path.name} is intact; " if path.is_file() else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"cannot write checkpoint {path}: the disk is full ({e.strerror}); {kept}"
            f"free space in {path.parent} (or train into another --out), then continue with --resume"
        )
    return OutputError(
        f"cannot write checkpoint {path}: {e.strerror or e}; {kept}make {path.parent} writable "
        "(or train into another --out), then continue with --resume"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Reads an fcnseg checkpoint without executing code (``safe_torch_load``)."""
    from fcnseg.weights import safe_torch_load

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"checkpoint {path} not found; pass the .pt file a training run wrote (RUN/best.pt or RUN/last.pt)")
    ckpt = safe_torch_load(path, what="checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise WeightsError(f"{path} is not an fcnseg checkpoint (no 'model'/'model_config' entries); pass RUN/best.pt or RUN/last.pt of a training run")
    check_model_config(ckpt["model_config"], f"checkpoint {path}")
    return ckpt


# the build_model arguments a checkpoint's model_config may hold: never ``weights`` (a
# checkpoint carries its own; an entry would make loading fetch or read another file)
MODEL_CONFIG_KEYS = ("name", "backbone", "num_classes", "in_channels", "upsample", "align", "output_stride", "context")
MAX_CLASSES = 255  # masks are uint8 with 255 = ignore
MAX_IN_CHANNELS = 16


def check_model_config(conf: object, source: str = "checkpoint") -> dict:
    """``conf`` (a checkpoint's ``model_config``) if it is a dict of known ``build_model``
    arguments of sane types and sizes; else ``WeightsError`` naming the entry. Nothing is
    built, read or fetched (the names themselves are checked by ``build_model``)."""
    bad = f"{source} is not a usable fcnseg checkpoint: its model_config"
    if not isinstance(conf, dict):
        raise WeightsError(f"{bad} is a {type(conf).__name__}, not a mapping; pass RUN/best.pt or RUN/last.pt of a training run")
    for key, value in conf.items():
        if key not in MODEL_CONFIG_KEYS:
            why = " (loading it would fetch or read other weights)" if key in ("weights", "progress") else ""
            raise WeightsError(f"{bad} has an entry {key!r}{why}, which fcnseg checkpoints never hold; allowed: {', '.join(MODEL_CONFIG_KEYS)}")
        if key in ("num_classes", "in_channels", "output_stride"):
            high = {"num_classes": MAX_CLASSES, "in_channels": MAX_IN_CHANNELS, "output_stride": 32}[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise WeightsError(f"{bad} has {key}={value!r}: must be an integer in 1..{high}")
        elif key == "context":
            if value is not None and not isinstance(value, str):
                raise WeightsError(f"{bad} has context={value!r}: must be null or a name")
        elif not isinstance(value, str) or len(value) > 64:
            raise WeightsError(f"{bad} has {key}={value!r}: must be a name")
    if "name" not in conf or "num_classes" not in conf:
        raise WeightsError(f"{bad} lacks 'name' or 'num_classes'; pass RUN/best.pt or RUN/last.pt of a training run")
    return conf


def model_from_checkpoint(ckpt: dict | str | os.PathLike) -> nn.Module:
    """Rebuilds the model a checkpoint describes (its ``model_config`` checked first by
    ``check_model_config``: no download, bounded sizes) and loads its weights strictly."""
    from fcnseg.models import build_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(**check_model_config(ckpt["model_config"]), progress=False)
    model.load_state_dict(ckpt["model"])
    return model


def checkpoint_meta(ckpt: dict) -> tuple[list[str], np.ndarray, tuple, tuple]:
    """What inference needs besides the weights: class names, palette (K, 3) uint8, mean, std
    (ImageNet statistics, with a warning, when the checkpoint has none)."""
    from fcnseg.data.base import make_palette
    from fcnseg.weights import IMAGENET_MEAN, IMAGENET_STD

    k = int(ckpt["model_config"].get("num_classes", 0)) or len(ckpt.get("classes") or ())
    classes = [str(c) for c in (ckpt.get("classes") or [str(i) for i in range(k)])]
    palette = ckpt.get("palette")
    palette = make_palette(len(classes)) if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    mean, std = ckpt.get("mean"), ckpt.get("std")
    if mean is None or std is None:
        log.warning("checkpoint has no mean/std; normalising with ImageNet statistics")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return classes, palette, tuple(float(v) for v in mean), tuple(float(v) for v in std)


def checkpoint_data(
    config: Mapping,
    data: str | None = None,
    data_root: str | os.PathLike | None = None,
    data_options: Mapping | None = None,
    split: str | None = None,
) -> tuple[str, str | os.PathLike | None, dict, str]:
    """(name, root, options, split) to score a checkpoint on: the arguments first, then its
    training config's validation data (``val_data``/``val_data_root``/``val_data_options``
    when the run validated on another dataset, else ``data``/``data_root``/``data_options``)
    and ``val_split`` (default "val"). ``data_options`` are added to the checkpoint's own when
    ``data`` is its dataset (or not given), else they are the only ones."""
    if config.get("val_data"):
        ck_data, ck_root, ck_options = (
            config["val_data"], config.get("val_data_root"), config.get("val_data_options")
        )
    else:
        ck_data, ck_root, ck_options = (
            config.get("data"), config.get("data_root"), config.get("data_options")
        )
    same = data is None or data == ck_data
    name = data or ck_data
    if not name:
        raise ConfigError("the checkpoint records no dataset; pass --data NAME (and --data-root DIR)")
    root = data_root if data_root is not None else (ck_root if same else None)
    options = dict(ck_options or {}) if same else {}
    options.update(data_options or {})
    return name, root, options, split or config.get("val_split") or "val"
