"""int8: post-training static quantization of a verified fp32 ONNX file (onnxruntime's
``quantize_static``: QDQ, per-channel int8 weights, uint8 activations calibrated with min-max on
training images), judged on the task (``fcnseg.inference.verify``)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.export.onnx import _quiet_torch_onnx, _write_atomic, ort_runner, require
from fcnseg.export.parity import Parity, check_parity
from fcnseg.inference.backends import ort_session

log = logging.getLogger(__name__)


class ImageCalibration:
    """onnxruntime ``CalibrationDataReader`` over normalised images (C, H, W) tensors."""

    def __init__(self, images: Sequence[torch.Tensor], input_name: str) -> None:
        self._it = iter(images)
        self.input_name = input_name

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x[None].float().numpy())}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def calibration_images(
    ckpt: dict, data: str, data_root: str | os.PathLike | None, *, split: str = "train", count: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    """``count`` normalised training images (an even spread over the split), at their size."""
    from fcnseg.inference.verify import task_data

    return task_data(ckpt, data, data_root, split, count=count, required=True).images


def weight_bits() -> int:
    """8 on CPUs with VNNI or AMX; 7 elsewhere (AVX2, AVX-512 without VNNI), where
    onnxruntime's uint8 x int8 kernel (VPMADDUBSW) adds two products in 16 bits and saturates with
    full-range weights (onnxruntime's quantization guide: ``reduce_range``). Measured on AMD EPYC
    [AVX2 only: no AVX-512, no native bf16] (Zen 3, no VNNI): 8-bit weights failed the task check of a test model even with 16
    layers kept fp32 (-0.41 mean IU); 7-bit passed with one; the 7-bit forward of FCN-4s/ResNet-18
    at 360x480 took 92 ms against 86 ms (fp32: 127 ms)."""
    from fcnseg.precision import cpu_has_int8_dot

    return 8 if cpu_has_int8_dot() else 7


def _quantize_static(src: Path, dst: Path, images: Sequence[torch.Tensor], input_name: str, exclude: Sequence[str] = (), bits: int = 8) -> None:
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
        nodes_to_exclude=list(exclude),
        reduce_range=bits == 7,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _pre_process(fp32_path: Path, pre: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx():  # the optimiser's progress lines
        quant_pre_process(os.fspath(fp32_path), os.fspath(pre), skip_symbolic_shape=True)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    images: Sequence[torch.Tensor],
    *,
    exclude: Sequence[str] = (),
    model: nn.Module | None = None,
    check_images: Sequence[torch.Tensor] = (),
) -> tuple[Path, list[Parity]]:
    """int8 static quantization of a verified fp32 ONNX file (QDQ, per-channel weights,
    activations calibrated on ``images`` with min-max); the nodes named in ``exclude`` stay
    fp32. Returns the path and, when ``model`` and ``check_images`` are given, the parity
    against PyTorch fp32 (reported, not enforced: int8 is judged on the task)."""
    require("onnxruntime")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "int8.onnx"
        name = ort_session(os.fspath(fp32_path)).get_inputs()[0].name
        _pre_process(Path(fp32_path), pre)
        bits = weight_bits()
        with contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx():
            _quantize_static(pre, q, images, name, exclude, bits)
        onnx = require("onnx")
        proto = onnx.load(os.fspath(q))
        src = onnx.load(os.fspath(fp32_path), load_external_data=False)
        meta = {p.key: p.value for p in src.metadata_props}
        meta["fcnseg.quantization"] = json.dumps({
            "type": "int8 static", "format": "QDQ", "weights": f"per-channel int8, {bits}-bit range", "activations": "uint8 min-max",
            "calibration_images": len(images), "fp32_nodes": list(exclude),
        })
        meta.pop("fcnseg.parity", None)
        parity = []
        if model is not None and check_images:
            parity = check_parity(model.eval(), ort_runner(ort_session(proto.SerializeToString())), [x[None] for x in check_images])
            meta["fcnseg.parity"] = json.dumps([p.figures() for p in parity])
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, meta)
        _write_atomic(proto.SerializeToString(), out)
    return out, parity


def layer_sensitivity(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: Sequence[torch.Tensor]) -> list[tuple[str, float]]:
    """The quantized nodes, most sensitive first: ``(node name, SQNR in dB)`` of each quantized
    node's input activation before vs after its quantize-dequantize pair, measured on
    ``images`` (onnxruntime's ``qdq_loss_debug``). Low SQNR = the layer loses the most."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    onnx = require("onnx")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        _pre_process(Path(fp32_path), pre)
        name = ort_session(os.fspath(pre)).get_inputs()[0].name
        acts = {}
        for label, src in (("fp32", pre), ("int8", Path(int8_path))):
            aug = Path(tmp) / f"{label}.aug.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                modify_model_output_intermediate_tensors(os.fspath(src), os.fspath(aug))
                acts[label] = collect_activations(os.fspath(aug), ImageCalibration(images, name))
        errors = compute_activation_error(create_activation_matching(acts["int8"], acts["fp32"]))
        graph = onnx.load(os.fspath(pre), load_external_data=False).graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            for t in node.input[:1]:
                consumers.setdefault(t, []).append(node.name)
    worst: dict[str, float] = {}
    for tensor, err in errors.items():  # qdq_err: the tensor before vs after its own quantization
        sqnr = float(err.get("qdq_err", err.get("xmodel_err", float("inf"))))
        for node in consumers.get(tensor, ()):
            worst[node] = min(worst.get(node, float("inf")), sqnr)
    return sorted(worst.items(), key=lambda kv: kv[1])
