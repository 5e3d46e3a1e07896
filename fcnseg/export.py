"""Export a trained model to ONNX, verified against PyTorch before anything is written.

``export_onnx(checkpoint, out)`` traces the model with the dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``, onnxscript): batch, height and width are dynamic,
the FCN head's size-dependent crops (``align="same"`` and ``"paper"``), ceil-mode pooling and
max-unpooling switches are traced as shape arithmetic, not baked in as the TorchScript
exporter does (its ``fuse`` crops come out as constants and the model fails at any other
size). The file is then run by onnxruntime on three input sizes, odd ones included
(``PARITY_SIZES``), and compared with the PyTorch fp32 model: ``max|Δlogit| <= 1e-4 x
max|logit|`` and argmax agreement ``>= 99.99 %``. A failed check raises ``ExportError`` with
the figures and nothing is written at ``out``.

Models that upsample through max-pooling switches (``upsample="unpool"``) are discontinuous in
their input: where two values of a pooling window are within the last bits of each other, any
other convolution kernel (onnxruntime's, or torch's own channels_last one) may pick the other
position, and max-unpooling then puts that value one pixel away. On FCN-8s/VGG16 at 97x131
(a mirrored input) this moves 2 of 12,707 pixels by 6.7e-2 of max|logit|: the same 2 pixels
and figure as torch channels_last against torch NCHW. For such models the check allows up to
``SWITCH_FLIP_PIXELS`` (0.1 %) of the pixels beyond the tolerance (every other pixel must be
within it, and argmax agreement stays ``>= 99.99 %``); a wrong export moves far more.

Metadata (ONNX ``metadata_props``, strings; JSON where structured) travels in the file:
``fcnseg.classes``, ``fcnseg.palette``, ``fcnseg.mean``, ``fcnseg.std``, ``fcnseg.input``
(layout and scaling), ``fcnseg.model_config``, ``fcnseg.parity`` (the figures measured),
``fcnseg.version``. ``read_metadata(path)`` gives them back as Python values.

``quantize_onnx(...)``: int8 post-training static quantization (onnxruntime's
``quantize_static``, QDQ, per-channel weights, calibrated on training images); its parity is
reported (argmax agreement), not enforced at the fp32 tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.errors import ConfigError, FcnsegError

log = logging.getLogger(__name__)

PARITY_SIZES: tuple[tuple[int, int], ...] = ((97, 131), (360, 480), (512, 512))
RTOL = 1e-4  # max |Δlogit| relative to max |logit|
MIN_AGREEMENT = 0.9999  # argmax agreement
SWITCH_FLIP_PIXELS = 1e-3  # pixels beyond RTOL allowed in a model with max-unpooling (module doc)
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


@dataclass
class Parity:
    """Export check figures for one input size."""

    size: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    agreement: float
    off_pixels: float = 0.0  # fraction of the pixels with some logit beyond RTOL x max|logit|
    allowed_off: float = 0.0  # SWITCH_FLIP_PIXELS for a model with max-unpooling, else 0

    @property
    def rel(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-30)

    @property
    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and (self.rel <= RTOL or self.off_pixels <= self.allowed_off)

    def __str__(self) -> str:
        off = ""
        if self.rel > RTOL:
            off = f" on {100 * self.off_pixels:.3f} % of the pixels"
            if self.allowed_off:
                off += f" (max-unpooling switch flips: up to {100 * self.allowed_off:g} % allowed)"
        return (
            f"{'x'.join(str(s) for s in self.size)}: max|Δlogit| {self.max_abs_diff:.2e} "
            f"({self.rel:.1e} of max|logit| {self.max_abs_logit:.3g}){off}, argmax agreement {100 * self.agreement:.4f} %"
        )

    def figures(self) -> dict:
        """The figures as stored in an exported file's ``fcnseg.parity``."""
        return {
            "size": list(self.size),
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "agreement": self.agreement,
            "off_pixels": self.off_pixels,
        }


def switch_flips_allowed(model: nn.Module) -> float:
    """``SWITCH_FLIP_PIXELS`` if ``model`` max-pools with switches (max-unpooling), else 0."""
    has = any(isinstance(m, nn.MaxPool2d) and m.return_indices for m in model.modules())
    return SWITCH_FLIP_PIXELS if has else 0.0


def compare(ref: torch.Tensor, out: torch.Tensor, allowed_off: float = 0.0) -> Parity:
    """Parity of ``out`` against the reference logits ``ref`` (both (N, K, H, W));
    ``allowed_off``: ``switch_flips_allowed(model)``."""
    ref, out = ref.float(), torch.as_tensor(out).float()
    if ref.shape != out.shape:
        return Parity(tuple(ref.shape), float("inf"), float(ref.abs().max()), 0.0, 1.0, allowed_off)
    diff = (ref - out).abs()
    scale = float(ref.abs().max())
    return Parity(
        tuple(ref.shape),
        float(diff.max()),
        scale,
        float((ref.argmax(1) == out.argmax(1)).float().mean()),
        float((diff.amax(1) > RTOL * scale).float().mean()),
        allowed_off,
    )


def parity_inputs(sizes: Sequence[tuple[int, int]] = PARITY_SIZES, in_channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic normalised-image-like inputs (1, C, h, w): smooth random fields (so the
    logits vary like on photos, not like on white noise) with a little noise on top."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.randn(1, in_channels, max(2, h // 16), max(2, w // 16), generator=g)
        x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        out.append(x + 0.1 * torch.randn(1, in_channels, h, w, generator=g))
    return out


def check_parity(model: nn.Module, run, inputs: Iterable[torch.Tensor]) -> list[Parity]:
    """``run(x) -> logits`` compared with ``model(x)`` (fp32 eager) on each input."""
    results = []
    allowed = switch_flips_allowed(model)
    with torch.no_grad():
        for x in inputs:
            results.append(compare(model(x), run(x), allowed))
    return results


def _checkpoint(checkpoint) -> dict:
    from fcnseg.engine.checkpoint import load_checkpoint

    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def checkpoint_metadata(ckpt: dict) -> dict[str, str]:
    """The ONNX ``metadata_props`` for a checkpoint (strings; JSON where structured)."""
    from fcnseg import __version__
    from fcnseg.engine.checkpoint import checkpoint_meta

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


def ort_session(model_bytes_or_path, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations and torch's thread count."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # no busy-waiting after a run: the spinning workers took the cores from the torch work that
    # follows each call (softmax, resize, argmax: 22 vs 3 ms a frame; call + that work 93 vs 88
    # ms at 1x360x480, 896 vs 763 ms at 8x360x480; experiments/ort_spinning.py,
    # docs/experiments/results.md) and from the next engine in auto's probe
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    src = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else os.fspath(model_bytes_or_path)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


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
        os.replace(tmp, out)
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
    from fcnseg.engine.checkpoint import model_from_checkpoint

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
    parity = check_parity(model, ort_runner(ort_session(data)), inputs)
    bad = [p for p in parity if not p.ok]
    if bad:
        raise ExportError(
            f"the exported model does not match PyTorch (needs max|Δlogit| <= {RTOL:g} x max|logit| and argmax "
            f">= {100 * MIN_AGREEMENT:g} %): " + "; ".join(str(p) for p in bad) + f"; nothing written at {out}"
        )
    meta["fcnseg.parity"] = json.dumps([p.figures() for p in parity])
    onnx.helper.set_model_props(proto, meta)
    _write_atomic(proto.SerializeToString(), out)
    return ExportResult(out, parity, meta)


class ImageCalibration:
    """onnxruntime ``CalibrationDataReader`` over normalised images (C, H, W) tensors."""

    def __init__(self, images: Sequence[torch.Tensor], input_name: str) -> None:
        self._it = iter(images)
        self.input_name = input_name

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x[None].float().numpy())}


def calibration_images(
    ckpt: dict, data: str, data_root: str | os.PathLike | None, *, split: str = "train", count: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    """``count`` normalised training images (an even spread over the split), at their size."""
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.engine.checkpoint import checkpoint_meta

    _, _, mean, std = checkpoint_meta(ckpt)
    ds = build_dataset(data, root=data_root, split=split, transforms=eval_transforms(mean=mean, std=std))
    if count < 1:
        raise ConfigError(f"--calib-images {count}: must be >= 1")
    n = len(ds)
    idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    return [ds[int(i)][0] for i in idx]


def _quantize_static(src: Path, dst: Path, images: Sequence[torch.Tensor], input_name: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        os.fspath(src),
        os.fspath(dst),
        ImageCalibration(images, input_name),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    images: Sequence[torch.Tensor],
    *,
    model: nn.Module | None = None,
    check_images: Sequence[torch.Tensor] = (),
) -> tuple[Path, list[Parity]]:
    """int8 static quantization of a verified fp32 ONNX file (QDQ, per-channel weights,
    activations calibrated on ``images`` with min-max). Returns the path and, when ``model``
    and ``check_images`` are given, the parity against PyTorch fp32 (reported, not enforced:
    int8 is judged by mean IU)."""
    require("onnxruntime")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "int8.onnx"
        name = ort_session(os.fspath(fp32_path)).get_inputs()[0].name
        with contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx():  # the optimiser's progress lines
            quant_pre_process(os.fspath(fp32_path), os.fspath(pre), skip_symbolic_shape=True)
            _quantize_static(pre, q, images, name)
        onnx = require("onnx")
        proto = onnx.load(os.fspath(q))
        src = onnx.load(os.fspath(fp32_path), load_external_data=False)
        meta = {p.key: p.value for p in src.metadata_props}
        meta["fcnseg.quantization"] = json.dumps({"type": "int8 static", "format": "QDQ", "weights": "per-channel int8", "activations": "uint8 min-max", "calibration_images": len(images)})
        meta.pop("fcnseg.parity", None)
        parity = []
        if model is not None and check_images:
            parity = check_parity(model.eval(), ort_runner(ort_session(proto.SerializeToString())), [x[None] for x in check_images])
            meta["fcnseg.parity"] = json.dumps([p.figures() for p in parity])
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, meta)
        _write_atomic(proto.SerializeToString(), out)
    return out, parity


def export(
    checkpoint: str | os.PathLike,
    *,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    calib_data: str | None = None,
    data_root: str | os.PathLike | None = None,
    calib_images: int = 100,
) -> ExportResult:
    """``fcnseg export``: the verified fp32 ONNX file, and with ``int8`` its quantized version
    (written at ``out``; the fp32 file beside it as ``NAME.fp32.onnx``)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    ckpt = _checkpoint(checkpoint)
    if out is None:
        out = Path(checkpoint).with_suffix(".int8.onnx" if int8 else ".onnx")
    out = Path(out)
    if not int8:
        return export_onnx(ckpt, out, opset=opset)
    if not calib_data:
        raise ConfigError("--int8 needs --calib-data NAME (and --data-root DIR): the training images to calibrate on")
    from fcnseg.engine.checkpoint import model_from_checkpoint

    images = calibration_images(ckpt, calib_data, data_root, count=calib_images)
    model = model_from_checkpoint(ckpt).eval()
    fp32 = out.with_name(out.name.removesuffix(".onnx").removesuffix(".int8") + ".fp32.onnx")
    res = export_onnx(ckpt, fp32, opset=opset, model=model)
    _, parity = quantize_onnx(fp32, out, images, model=model, check_images=images[:2])
    return ExportResult(out, parity, res.metadata)
