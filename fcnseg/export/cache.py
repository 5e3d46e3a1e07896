"""The ONNX files ``--backend auto`` and the ONNX backends run, exported once per model and
kept in ``fcnseg.inference.backends.cache_dir()/onnx/``: ``<model hash>.onnx`` (verified fp32) and
``<model hash>.int8.onnx`` (``.int8w7.onnx``: 7-bit weights, CPUs without VNNI/AMX), each with its SHA-256 beside it (``.sha256``). An entry whose bytes
do not match (truncated, or replaced by whoever can write the cache folder) is exported again.
``check_onnx_matches`` refuses an ``--onnx`` file exported from another model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.export.onnx import export_onnx, read_metadata
from fcnseg.export.quantize import quantize_onnx
from fcnseg.inference.backends import cache_dir, model_hash

log = logging.getLogger("fcnseg.inference.backends")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_entry_ok(path: Path) -> bool:
    """Whether a cached file exists and its bytes match the SHA-256 written beside it."""
    digest = path.with_name(path.name + ".sha256")
    try:
        return path.is_file() and digest.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def _seal(path: Path) -> None:
    """Writes ``path``'s SHA-256 beside it (atomically)."""
    digest = path.with_name(path.name + ".sha256")
    tmp = digest.with_name(f"{digest.name}.{os.getpid()}.tmp")
    tmp.write_text(sha256_file(path) + "\n")
    os.replace(tmp, digest)


def cached_onnx(model: nn.Module, ckpt: dict | None = None) -> Path:
    """The verified ONNX export of ``model`` from the cache, exported there first (or again,
    when the cached bytes do not match their SHA-256)."""
    path = cache_dir() / "onnx" / f"{model_hash(model)}.onnx"
    if not _cache_entry_ok(path):
        if path.exists():
            log.warning("cached ONNX file %s does not match its SHA-256; exporting it again", path)
        if ckpt is None:
            ckpt = {"model": model.state_dict(), "model_config": getattr(model, "config", {})}
        log.info("exporting the model to ONNX (once per checkpoint; cached at %s)", path)
        export_onnx(ckpt, path, model=model)
        _seal(path)
    return path


def cached_int8(model: nn.Module, ckpt: dict | None, images: Callable[[], list[torch.Tensor]]) -> Path:
    """The int8 (QDQ) version of ``cached_onnx(model)``, calibrated on ``images()`` (called only
    when the file is not cached yet). 7-bit weights (CPUs without VNNI/AMX) have a file of their
    own, so a cache shared by two kinds of CPU never hands one the other's."""
    from fcnseg.export.quantize import weight_bits

    bits = weight_bits()
    path = cache_dir() / "onnx" / f"{model_hash(model)}.int8{'' if bits == 8 else f'w{bits}'}.onnx"
    if not _cache_entry_ok(path):
        fp32 = cached_onnx(model, ckpt)
        calib = images()
        log.info("quantizing the model to int8 (calibrated on %d images; cached at %s)", len(calib), path)
        quantize_onnx(fp32, path, calib)
        _seal(path)
    return path


def check_onnx_matches(path: Path, model: nn.Module) -> None:
    """Refuses an ``--onnx`` file exported from another model than ``model`` (its
    ``fcnseg.model_hash`` metadata), or one that cannot be read."""
    try:
        meta = read_metadata(path)
    except Exception as e:
        raise ConfigError(f"--onnx {path}: not a readable ONNX file ({type(e).__name__}); export it again with `fcnseg export`") from None
    theirs, ours = meta.get("model_hash"), model_hash(model.float())
    if theirs != ours:
        raise ConfigError(
            f"--onnx {path} was exported from model {theirs or '(unknown: no fcnseg.model_hash, an older export)'}, "
            f"but the checkpoint is model {ours}; export this checkpoint with `fcnseg export --checkpoint ...`"
        )
