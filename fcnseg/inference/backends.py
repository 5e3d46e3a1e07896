"""Inference backends: one callable per engine, ``backend(x) -> logits``.

``load_backend(name, model_or_checkpoint, ...)`` returns a ``Backend``: called with normalised
images ``(N, C, H, W)`` (float32, any N, H, W >= 32) it returns float32 logits
``(N, K, H, W)`` on the CPU (or the torch device). ``fcnseg.inference.segment.segment`` (and so
``evaluate``, ``predict``, TTA, sliding windows and the CRF) accepts one wherever it accepts a
model.

=============  ==============================================================================
``torch``      eager PyTorch, in the chosen precision (``auto``: bf16 + channels_last where
               the CPU runs bf16 natively, else fp32)
``compile``    ``torch.compile`` (inductor) with freezing (weights folded as constants), fp32
``onnxruntime`` the model exported to ONNX (verified, ``fcnseg.export``), onnxruntime CPU
``openvino``   the same ONNX file compiled by OpenVINO's CPU plugin, f32 inference precision
               (OpenVINO would otherwise pick bf16 on CPUs that have it)
``auto``       (the default) chosen by ``fcnseg.inference.loader.load_engine``: the fastest engine
               verified for this model on this machine, exact fp32 ones on the logits, bf16
               and int8 ones on the task (mean IU on labelled images)
=============  ==============================================================================

ONNX files exported for a backend are cached (``cache_dir()/onnx/<model hash>.onnx``, and the
int8 file as ``<model hash>.int8.onnx``), each with its SHA-256 beside it (``.sha256``): an entry
whose bytes do not match (truncated, replaced by whoever can write the cache folder) is exported
again, so the export and its check run once per checkpoint. An ``--onnx FILE`` must carry the
model hash of the checkpoint it is run for (``fcnseg.model_hash`` in its metadata) or it is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.precision import Precision

log = logging.getLogger(__name__)

BACKEND_NAMES = ("torch", "compile", "onnxruntime", "openvino", "auto")
# the candidates `auto` tries, in this order (ties keep the earlier one). Not `compile`: its
# first call at each shape compiles in every new process (8-22 s quiet, 258 s on 2 shared cores
# for FCN-8s/ResNet-18 at 360x480) and it ran no faster than onnxruntime/OpenVINO (docs/deploy.md).
AUTO_CANDIDATES = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}


def cache_dir() -> Path:
    """``$FCNSEG_CACHE``, else ``$XDG_CACHE_HOME/fcnseg``, else ``~/.cache/fcnseg``."""
    env = os.environ.get("FCNSEG_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()) / "fcnseg"


def installed(name: str) -> bool:
    """Whether the packages backend ``name`` needs can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(p) is not None for p in _PACKAGES.get(name, ()))


def require(name: str) -> None:
    if not installed(name):
        missing = [p for p in _PACKAGES[name] if not installed_pkg(p)]
        raise ConfigError(
            f"--backend {name} needs {', '.join(missing)}, which is not installed; "
            'install the export extra: pip install -e ".[export]"'
        )


def installed_pkg(pkg: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(pkg) is not None


def model_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the model's config and state dict: the cache key of
    its exports and probes."""
    h = hashlib.sha256(json.dumps(getattr(model, "config", {}), sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return h.hexdigest()[:16]


def cpu_fingerprint() -> str:
    """CPU model name and its vector-ISA flags, torch's thread count (what a timing depends on)."""
    name, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                keep = ("avx", "amx", "fma", "vnni", "bf16", "f16c", "sse4")
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split() if f.startswith(keep)))
    return f"{name} [{flags}] threads={torch.get_num_threads()}"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    for pkg in ("onnxruntime", "openvino"):
        with contextlib.suppress(Exception):
            import importlib.metadata

            out.append(f"{pkg} {importlib.metadata.version(pkg)}")
    return ", ".join(out)


class Backend:
    """``backend(x: (N, C, H, W) float32) -> float32 logits (N, K, H, W)``. ``name`` says which
    engine runs."""

    name = "?"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    precision_name = "fp32"  # what it computes in: fp32, bf16 or int8
    evidence: dict | None = None  # how it was chosen (fcnseg.inference.loader)

    def __repr__(self) -> str:
        return f"<fcnseg backend {self.name}>"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, precision: Precision, device: torch.device) -> None:
        self.device, self.precision = device, precision
        self.model = model.to(device).eval()
        if precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision_name = precision.name
        if precision.name != "fp32":
            self.name = f"torch ({precision.name})"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast(self.device):
            return self.model(x).float()


class CompileBackend(Backend):
    """``torch.compile`` (inductor) with freezing; compiles at the first call of each shape
    family (a second size switches to a dynamic-shape graph)."""

    name = "compile"

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.compiled = torch.compile(self.model)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x.to(self.device)).float()


def _warn_full_range_int8(path: Path, quant: str) -> None:
    """An int8 file with 8-bit weights (quantized on a CPU with VNNI/AMX, or before fcnseg
    chose the range by CPU) on a CPU without an int8 dot product: onnxruntime's kernel there
    can saturate (fcnseg.export.quantize.weight_bits); say so and how to mend it."""
    from fcnseg.precision import cpu_has_int8_dot

    if "7-bit" in quant or cpu_has_int8_dot():
        return
    log.warning(
        "%s: int8 file with 8-bit weights on a CPU without VNNI/AMX, where onnxruntime's int8 kernel can saturate "
        "and lose accuracy; export it again on this machine (`fcnseg export --int8`: 7-bit weights here) or use --backend auto",
        path,
    )


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike) -> None:
        self.path = Path(onnx_path)
        self.session = ort_session(self.path)
        self._input = self.session.get_inputs()[0].name
        quant = self.session.get_modelmeta().custom_metadata_map.get("fcnseg.quantization")
        if quant is not None:
            self.name, self.precision_name = "onnxruntime (int8)", "int8"
            _warn_full_range_int8(self.path, quant)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self._input: arr})[0]).to(x.device)


class OpenVinoBackend(Backend):
    """An ONNX file compiled by OpenVINO's CPU plugin: f32 inference precision (OpenVINO would
    otherwise pick bf16 on CPUs that have it), or ``bf16``; an int8 (QDQ) file runs int8."""

    name = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, *, bf16: bool = False, int8: bool | None = None) -> None:
        """``int8``: whether the file is an int8 export (None: read from its metadata, which
        imports onnx, ~0.6 s; the engine cache knows which of its files is which)."""
        self.path = Path(onnx_path)
        core = _ov_core()
        config = {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        }
        self.compiled = core.compile_model(core.read_model(os.fspath(self.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        if _is_int8(self.path) if int8 is None else int8:
            self.name, self.precision_name = "openvino (int8)", "int8"
        elif bf16:
            self.name, self.precision_name = "openvino (bf16)", "bf16"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        out = self.request.infer({0: arr})
        return torch.from_numpy(np.array(next(iter(out.values())))).to(x.device)


_OV_CORE: list = []


def _ov_core():
    """One OpenVINO ``Core`` per process for every OpenVINO engine (several Cores, each with its
    own thread pools, crashed the process at a later SIGINT in the test suite)."""
    if not _OV_CORE:
        import openvino as ov

        _OV_CORE.append(ov.Core())
    return _OV_CORE[0]


def precision_of(engine_name: str) -> str:
    """``"onnxruntime (int8)"`` -> ``"int8"``, ``"torch (bf16)"`` -> ``"bf16"``, else fp32."""
    return engine_name.split("(", 1)[1].rstrip(")") if "(" in engine_name else "fp32"


def ort_session(model_bytes_or_path, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations and torch's thread count."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError('onnxruntime is not installed; install the export extra: pip install -e ".[export]"') from None
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
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # truncated / not ONNX: onnxruntime raises its own exception types
        if isinstance(src, bytes):
            raise
        raise ConfigError(f"{src}: not a readable ONNX file ({type(e).__name__}: {str(e).splitlines()[0][:120]}); export it again with `fcnseg export`") from None


def _is_int8(path: Path) -> bool:
    """Whether an ONNX file was written by ``fcnseg export --int8`` (its metadata says so; the
    cache's int8 files say it in their name, which spares importing onnx)."""
    if path.name.endswith(".int8.onnx"):
        return True
    with contextlib.suppress(Exception):
        import onnx

        model = onnx.load(os.fspath(path), load_external_data=False)
        return any(p.key == "fcnseg.quantization" for p in model.metadata_props)
    return False


def fp32_only(name: str, precision: str | Precision) -> None:
    """The explicit non-torch backends run fp32 (or their file's int8)."""
    if isinstance(precision, Precision):
        precision = precision.name
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"--backend {name} runs fp32; drop --precision {precision} (or use --backend torch)")


def auto_candidates() -> list[str]:
    """The engines ``auto`` chooses among here: ``AUTO_CANDIDATES`` that are installed."""
    return [c for c in AUTO_CANDIDATES if c in ("torch", "compile") or installed(c)]


def resolve_backend(name: str, device: str | torch.device = "cpu", precision: str | Precision = "auto") -> str:
    """``name``, except ``auto`` with nothing to choose, which is ``torch``: on a GPU, with a
    precision other than auto/fp32 asked for (only torch runs it), or with no other engine
    installed (no export extra). The caller then runs torch in ``precision`` as before."""
    if name != "auto":
        return name
    prec = precision.name if isinstance(precision, Precision) else precision
    if torch.device(device).type != "cpu" or prec not in ("auto", "fp32") or auto_candidates() == ["torch"]:
        return "torch"
    return "auto"


def size_class(shape: tuple[int, ...]) -> str:
    """Timing bucket of an input shape: batch (1, 2-4, 5+) x megapixels per image (powers of 2)."""
    n, _, h, w = shape
    mp = h * w / 1e6
    bucket = 0.0625
    while bucket < mp and bucket < 16:
        bucket *= 2
    b = "1" if n == 1 else "2-4" if n <= 4 else "5+"
    return f"b{b}-{bucket:g}MP"


def time_interleaved(runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, *, rounds: int = 3) -> dict[str, float]:
    """Median seconds of each engine's call on ``x`` (already warmed up), over ``rounds``
    rounds that each call every engine once, in turn: a slow spell of the machine, or an
    engine's threads still busy after its call, hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


def backend_name(model) -> str:
    """What runs ``model``, as eval/predict/serve report it: ``torch`` for a module; a backend's name, ``auto (onnxruntime)`` for auto."""
    if isinstance(model, nn.Module):
        return "torch"
    name = getattr(model, "name", type(model).__name__)
    chosen = sorted({e["backend"] for e in getattr(model, "report", {}).values()})
    return f"{name} ({', '.join(chosen)})" if chosen else name
