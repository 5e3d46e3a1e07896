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

import logging
import os
from pathlib import Path

from fcnseg.errors import ConfigError
from fcnseg.export.onnx import (
    DEFAULT_OPSET,
    EXPORT_PIP,
    FORMATS,
    ExportError,
    ExportResult,
    checkpoint_metadata,
    export_onnx,
    ort_runner,
    read_metadata,
    require,
    trace_onnx,
)
from fcnseg.export.parity import (
    MIN_AGREEMENT,
    PARITY_SIZES,
    RTOL,
    SWITCH_FLIP_PIXELS,
    Parity,
    check_parity,
    compare,
    parity_inputs,
    switch_flips_allowed,
)
from fcnseg.export.quantize import calibration_images, layer_sensitivity, quantize_onnx

log = logging.getLogger(__name__)

# int8 that misses the task check keeps this many of its most sensitive layers in fp32, in turn
FP32_LAYER_STEPS = (0, 1, 2, 4, 8, 16)

__all__ = [
    "DEFAULT_OPSET", "EXPORT_PIP", "FORMATS", "MIN_AGREEMENT", "PARITY_SIZES", "RTOL", "SWITCH_FLIP_PIXELS",
    "ExportError", "ExportResult", "Parity", "calibration_images", "check_parity", "checkpoint_metadata",
    "compare", "export", "export_onnx", "ort_runner", "parity_inputs", "quantize_onnx", "read_metadata",
    "require", "switch_flips_allowed", "trace_onnx",
]


def _load(checkpoint) -> dict:
    from fcnseg.checkpoint import load_checkpoint

    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def export(
    checkpoint: str | os.PathLike,
    *,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    calib_data: str | None = None,
    data_root: str | os.PathLike | None = None,
    calib_split: str | None = None,
    calib_images: int = 100,
    tolerance=None,
) -> ExportResult:
    """``fcnseg export``: the verified fp32 ONNX file, and with ``int8`` its quantized version
    (written at ``out``; the fp32 file beside it as ``NAME.fp32.onnx``), and a model card
    ``NAME.card.json`` beside it (what was checked, with the figures).

    int8 calibrates on the run's training images (``calib_data``/``data_root``: another
    dataset's training split) and is scored against eager fp32 on the run's validation split
    (``calib_split``: another split). It passes when it is within ``tolerance``
    (``fcnseg.inference.verify.Tolerance``); otherwise the most sensitive layers (measured per
    layer, ``layer_sensitivity``) stay fp32, 1, 2, 4 ... 16 of them, until it passes; else
    ``ExportError`` with the figures and nothing written."""
    from fcnseg.inference.verify import Tolerance

    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    tolerance = tolerance or Tolerance()
    ckpt = _load(checkpoint)
    if out is None:
        out = Path(checkpoint).with_suffix(".int8.onnx" if int8 else ".onnx")
    out = Path(out)
    card = {"checkpoint": None if isinstance(checkpoint, dict) else str(checkpoint)}
    if not int8:
        res = export_onnx(ckpt, out, opset=opset)
        card["onnx"] = {"file": out.name, "precision": "fp32", "parity": [p.figures() for p in res.parity], "model_hash": res.metadata["fcnseg.model_hash"]}
    else:
        res = _export_int8(ckpt, out, opset, calib_data, data_root, calib_split, calib_images, tolerance, card)
    res.card = write_card(out, card)
    return res


def _export_int8(ckpt, out: Path, opset, calib_data, data_root, calib_split, calib_images, tolerance, card) -> ExportResult:
    import tempfile

    import torch

    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.inference.backends import OnnxRuntimeBackend
    from fcnseg.inference.verify import judge, score_engine, task_data, train_data

    if calib_data:
        calib = calibration_images(ckpt, calib_data, data_root, count=calib_images)
    else:
        train = train_data(ckpt, calib_images)
        if train is None:
            raise ConfigError(
                "--int8 calibrates on the run's training images, which are not on this machine; "
                "pass --calib-data NAME --data-root DIR"
            )
        calib = train.images
    check = task_data(ckpt, calib_data, data_root, calib_split, required=True)
    model = model_from_checkpoint(ckpt).float().eval()
    fp32 = out.with_name(out.name.removesuffix(".onnx").removesuffix(".int8") + ".fp32.onnx")
    res = export_onnx(ckpt, fp32, opset=opset, model=model)
    from fcnseg.inference.backends import TorchBackend
    from fcnseg.precision import resolve_precision

    reference = score_engine(TorchBackend(model, resolve_precision("fp32", "cpu", quiet=True), torch.device("cpu")), check)
    tries = []
    exclude: list[str] = []
    ranked: list[tuple[str, float]] | None = None
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        trial = Path(tmp) / "trial.onnx"
        for keep in FP32_LAYER_STEPS:
            if keep:
                if ranked is None:
                    log.info("int8: measuring each layer's quantization error ...")
                    ranked = layer_sensitivity(fp32, trial, calib[:4])
                if keep > len(ranked):
                    break
                exclude = [n for n, _ in ranked[:keep]]
            quantize_onnx(fp32, trial, calib, exclude=exclude)
            scores = score_engine(OnnxRuntimeBackend(trial), check)
            verdict = judge(reference, scores, check.classes, tolerance)
            tries.append({"fp32_layers": list(exclude), "mean_iou": scores["mean_iou"], **{k: verdict[k] for k in ("miou_delta", "worst_class", "worst_class_delta", "qualified", "reason")}})
            log.info(
                "int8 with %d fp32 layer%s: mean IU %.2f vs %.2f fp32 (%+.2f), worst class %s %+.2f: %s",
                len(exclude), "" if len(exclude) == 1 else "s", scores["mean_iou"], reference["mean_iou"],
                verdict["miou_delta"], verdict["worst_class"], verdict["worst_class_delta"],
                "passes" if verdict["qualified"] else verdict["reason"],
            )
            if verdict["qualified"]:
                _, parity = quantize_onnx(fp32, out, calib, exclude=exclude, model=model, check_images=calib[:2])
                card["onnx"] = {
                    "file": out.name, "precision": "int8", "fp32_file": fp32.name, "model_hash": res.metadata["fcnseg.model_hash"],
                    "calibration_images": len(calib), "fp32_layers": list(exclude),
                }
                card["task_check"] = {
                    "checked_on": check.describe(), "reference_mean_iou": reference["mean_iou"],
                    "tolerance": {"max_miou_drop": tolerance.max_miou_drop, "max_class_drop": tolerance.max_class_drop},
                    "tries": tries, "class_deltas": verdict["class_deltas"],
                }
                return ExportResult(out, parity, res.metadata)
    raise ExportError(
        f"int8 does not reach fp32 on {check.name}/{check.split} ({len(check.indices)} images) even with the most sensitive layers in fp32: "
        + "; ".join(f"{len(t['fp32_layers'])} fp32 layers: {t['miou_delta']:+.2f} mean IU, {t['worst_class']} {t['worst_class_delta']:+.2f}" for t in tries)
        + f" (allowed -{tolerance.max_miou_drop:g} / -{tolerance.max_class_drop:g}); the fp32 file {fp32} is verified; "
        f"nothing written at {out} (or raise --max-miou-drop / --max-class-drop)"
    )


def write_card(out: Path, card: dict) -> Path:
    """The model card ``NAME.card.json`` beside an exported ``NAME.onnx`` (or ``NAME.int8.onnx``)."""
    import json
    import time

    from fcnseg import __version__
    from fcnseg.export.onnx import _write_atomic
    from fcnseg.inference.backends import cpu_fingerprint, versions

    card = {"fcnseg": __version__, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": cpu_fingerprint(), "versions": versions(), **card}
    path = out.with_name(out.name.removesuffix(".onnx") + ".card.json")
    _write_atomic((json.dumps(card, indent=1, default=str) + "\n").encode(), path)
    return path
