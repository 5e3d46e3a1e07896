"""ONNX export: trace with the dynamo exporter, check against PyTorch, write with metadata
(``fcnseg.export`` module doc)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.export.parity import (
    MIN_AGREEMENT,
    PARITY_SIZES,
    RTOL,
    Parity,
    check_parity,
    parity_inputs,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
FORMATS = ("onnx",)
EXPORT_PIP = 'pip install -e ".[export]"'


class ExportError(FcnsegError):
    """The model cannot be exported, or the exported file does not match PyTorch."""


def require(module: str):
    """Imports an optional package of the ``export`` extra, or a one-line error with the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; install the export extra: {EXPORT_PIP}") from None


class _Logits(nn.Module):
    """``forward(x) -> logits``, positional only (the FCN forward's keyword ``coarse`` must not
    reach the exporter)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _checkpoint(checkpoint) -> dict:
    from fcnseg.checkpoint import load_checkpoint

    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def checkpoint_metadata(ckpt: dict) -> dict[str, str]:
    """The ONNX ``metadata_props`` for a checkpoint (strings; JSON where structured)."""
    from fcnseg import __version__
    from fcnseg.checkpoint import checkpoint_meta

    classes, palette, mean, std = checkpoint_meta(ckpt)
    return {
        "fcnseg.version": __version__,
        "fcnseg.classes": json.dumps(classes),
        "fcnseg.palette": json.dumps(np.asarray(palette).astype(int).tolist()),
        "fcnseg.mean": json.dumps(list(mean)),
        "fcnseg.std": json.dumps(list(std)),
        "fcnseg.input": "float32 NCHW, RGB, pixel values / 255, then (x - mean) / std per channel; any N, H, W >= 32",
        "fcnseg.output": "float32 logits (N, num_classes, H, W) at the input's size; argmax over dim 1 is the class",
        "fcnseg.model_config": json.dumps(ckpt["model_config"]),
    }


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported file's ``fcnseg.*`` metadata as Python values (JSON decoded where it is)."""
    onnx = require("onnx")
    model = onnx.load(os.fspath(path), load_external_data=False)
    out = {}
    for prop in model.metadata_props:
        if not prop.key.startswith("fcnseg."):
            continue
        key = prop.key[len("fcnseg.") :]
        try:
            out[key] = json.loads(prop.value)
        except ValueError:
            out[key] = prop.value
    return out


def trace_onnx(model: nn.Module, *, opset: int = DEFAULT_OPSET, in_channels: int = 3):
    """The model as an ``onnx.ModelProto`` with dynamic batch, height and width (unverified)."""
    require("onnxscript")
    onnx = require("onnx")
    model = _Logits(model.eval()).eval()
    example = parity_inputs(((97, 131),), in_channels)[0].repeat(2, 1, 1, 1)
    dyn = torch.export.Dim.DYNAMIC
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), _quiet_torch_onnx():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}},
                optimize=True,
                verify=False,
                report=False,
            )
    except Exception as e:  # the exporter's errors are long; keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the ONNX exporter failed on this model ({type(e).__name__}: {first[:300]})") from e
    proto = program.model_proto
    # names as the ONNX graph spells them, dims named for readers (Netron, onnxruntime)
    for value, names in ((proto.graph.input[0], ("batch", "height", "width")), (proto.graph.output[0], ("batch", "height", "width"))):
        dims = value.type.tensor_type.shape.dim
        for i, name in zip((0, 2, 3), names, strict=True):
            dims[i].ClearField("dim_value")
            dims[i].dim_param = name
    onnx.checker.check_model(proto)
    return proto


@contextlib.contextmanager
def _quiet_torch_onnx():
    """The exporter logs progress lines and torchvision-missing warnings at WARNING level, its
    optimiser (onnx_ir) a line per deduplicated initializer at INFO."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def ort_runner(session):
    """``run(x: (N, C, H, W) tensor) -> logits tensor`` over an onnxruntime session."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(session.run(None, {name: arr})[0])

    return run


@dataclass
class ExportResult:
    path: Path
    parity: list[Parity]
    metadata: dict[str, str]
    card: Path | None = None

    def summary(self) -> str:
        worst = max(self.parity, key=lambda p: p.rel)
        agree = min(p.agreement for p in self.parity)
        sizes = ", ".join(f"{p.size[0]}x{p.size[-2]}x{p.size[-1]}" for p in self.parity)
        return (
            f"wrote {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB); verified against PyTorch fp32 on "
            f"{sizes} (NxHxW): worst max|Δlogit| "
            f"{worst.rel:.1e} of max|logit|, argmax agreement >= {100 * agree:.4f} %"
        )


def _write_atomic(data: bytes, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an exported model is meant to be shared
        os.replace(tmp, out)
        with contextlib.suppress(OSError):  # the rename itself survives a crash
            dirfd = os.open(out.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_onnx(
    checkpoint: str | os.PathLike | dict,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    sizes: Sequence[tuple[int, int]] = PARITY_SIZES,
    model: nn.Module | None = None,
) -> ExportResult:
    """Exports the checkpoint's model to ONNX at ``out`` after checking it (module doc).

    ``checkpoint``: a ``.pt`` path or a loaded checkpoint dict; ``model``: the built model, if
    the caller has it already. ``sizes``: the (h, w) checked (batch 1, plus batch 2 at the
    first size). Raises ``ExportError`` (nothing written) if the exporter fails or the check
    does not pass."""
    from fcnseg.checkpoint import model_from_checkpoint

    if not isinstance(opset, int) or not 17 <= opset <= 23:
        raise ConfigError(f"--opset {opset}: the exporter writes opsets 17 to 23 (default {DEFAULT_OPSET})")
    onnx = require("onnx")
    require("onnxruntime")
    ckpt = _checkpoint(checkpoint)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: name the file NAME.onnx")
    model = (model if model is not None else model_from_checkpoint(ckpt)).float().eval()
    in_ch = int(ckpt["model_config"].get("in_channels", 3))
    proto = trace_onnx(model, opset=opset, in_channels=in_ch)
    meta = checkpoint_metadata(ckpt)
    data = proto.SerializeToString()
    inputs = parity_inputs(sizes, in_ch)
    inputs.insert(1, torch.cat([inputs[0], inputs[0].flip(-1)]))  # batch 2
    from fcnseg.inference.backends import model_hash, ort_session

    parity = check_parity(model, ort_runner(ort_session(data)), inputs)
    bad = [p for p in parity if not p.ok]
    if bad:
        raise ExportError(
            f"the exported model does not match PyTorch (needs max|Δlogit| <= {RTOL:g} x max|logit| and argmax "
            f">= {100 * MIN_AGREEMENT:g} %): " + "; ".join(str(p) for p in bad) + f"; nothing written at {out}"
        )
    meta["fcnseg.parity"] = json.dumps([p.figures() for p in parity])
    meta["fcnseg.model_hash"] = model_hash(model)
    onnx.helper.set_model_props(proto, meta)
    _write_atomic(proto.SerializeToString(), out)
    return ExportResult(out, parity, meta)
