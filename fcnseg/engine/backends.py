"""Inference backends: one callable per engine, ``backend(x) -> logits``.

``load_backend(name, model_or_checkpoint, ...)`` returns a ``Backend``: called with normalised
images ``(N, C, H, W)`` (float32, any N, H, W >= 32) it returns float32 logits
``(N, K, H, W)`` on the CPU (or the torch device). ``fcnseg.engine.inference.segment`` (and so
``evaluate``, ``predict``, TTA, sliding windows and the CRF) accepts one wherever it accepts a
model.

=============  ==============================================================================
``torch``      eager PyTorch, in the chosen precision (``auto``: bf16 + channels_last where
               the CPU runs bf16 natively, else fp32)
``compile``    ``torch.compile`` (inductor) with freezing (weights folded as constants), fp32
``onnxruntime`` the model exported to ONNX (verified, ``fcnseg.export``), onnxruntime CPU
``openvino``   the same ONNX file compiled by OpenVINO's CPU plugin, f32 inference precision
               (OpenVINO would otherwise pick bf16 on CPUs that have it)
``auto``       (the default) the fastest of torch fp32, onnxruntime and openvino that are installed **and**
               verified for this model on this machine (not ``compile``: minutes of
               compilation per process): on the first call at a new input size class it builds
               each, checks its logits against eager fp32 on that input (the export tolerance:
               max|Δlogit| <= 1e-4 x max|logit|, argmax >= 99.99 %) and times them in turns
               (three rounds, each calling every engine once; medians); the choice is
               cached per checkpoint, CPU and library versions (``cache_dir()/auto.json``).
               With nothing to choose it is ``torch`` in the precision asked (``auto``: bf16
               where native): without the export extra, on a GPU, or with an explicit
               ``--precision`` other than fp32 (which only torch runs); ``resolve_backend``
=============  ==============================================================================

ONNX files exported for a backend are cached too (``cache_dir()/onnx/<checkpoint hash>.onnx``),
so the export and its check run once per checkpoint.
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

from fcnseg.engine.precision import Precision, resolve_precision
from fcnseg.errors import ConfigError

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


def _require(name: str) -> None:
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

    def __repr__(self) -> str:
        return f"<fcnseg backend {self.name}>"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, precision: Precision, device: torch.device) -> None:
        self.device, self.precision = device, precision
        self.model = model.to(device).eval()
        if precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
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


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike) -> None:
        from fcnseg.export import ort_runner, ort_session

        self.path = Path(onnx_path)
        self.session = ort_session(self.path)
        self._run = ort_runner(self.session)
        if _is_int8(self.path):
            self.name = "onnxruntime (int8)"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x).to(x.device)


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, onnx_path: str | os.PathLike) -> None:
        import openvino as ov

        self.path = Path(onnx_path)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            # f32: on CPUs with avx512_bf16/AMX OpenVINO otherwise runs bf16 (not verified)
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(core.read_model(os.fspath(self.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        if _is_int8(self.path):
            self.name = "openvino (int8)"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        out = self.request.infer({0: arr})
        return torch.from_numpy(np.array(next(iter(out.values())))).to(x.device)


def _is_int8(path: Path) -> bool:
    """Whether an ONNX file was written by ``fcnseg export --int8`` (its metadata says so)."""
    with contextlib.suppress(Exception):
        from fcnseg.export import read_metadata

        return "quantization" in read_metadata(path)
    return False


def cached_onnx(model: nn.Module, ckpt: dict | None = None) -> Path:
    """The verified ONNX export of ``model`` from the cache, exporting it there first."""
    from fcnseg.export import export_onnx

    path = cache_dir() / "onnx" / f"{model_hash(model)}.onnx"
    if not path.is_file():
        if ckpt is None:
            ckpt = {"model": model.state_dict(), "model_config": getattr(model, "config", {})}
        log.info("exporting the model to ONNX (once per checkpoint; cached at %s)", path)
        export_onnx(ckpt, path, model=model)
    return path


def _as_model(model_or_checkpoint) -> tuple[nn.Module, dict | None]:
    from fcnseg.engine.checkpoint import load_checkpoint, model_from_checkpoint

    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint, None
    ckpt = model_or_checkpoint if isinstance(model_or_checkpoint, dict) else load_checkpoint(model_or_checkpoint)
    return model_from_checkpoint(ckpt), ckpt


def _fp32_precision(name: str, precision: str | Precision, device: torch.device) -> Precision:
    if isinstance(precision, Precision):
        precision = precision.name
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"--backend {name} runs fp32; drop --precision {precision} (or use --backend torch)")
    return resolve_precision("fp32", device, quiet=True)


def load_backend(
    name: str,
    model_or_checkpoint: nn.Module | dict | str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str | Precision = "auto",
    onnx_path: str | os.PathLike | None = None,
) -> Backend:
    """The backend ``name`` (``BACKEND_NAMES``) for a model, a checkpoint dict or a ``.pt``
    path. ``precision`` applies to ``torch`` (the others run fp32; asking them for bf16 is an
    error). ``onnx_path``: run this exported file (e.g. an int8 one) in ``onnxruntime`` /
    ``openvino`` instead of the checkpoint's own cached export."""
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    device = torch.device(device)
    if name != "torch" and device.type != "cpu":
        raise ConfigError(f"--backend {name} runs on the CPU; use --device cpu (or --backend torch on {device})")
    if onnx_path is not None:
        if name not in ("onnxruntime", "openvino"):
            raise ConfigError(f"--onnx FILE runs in --backend onnxruntime or openvino, not {name}")
        if not Path(onnx_path).is_file():
            raise ConfigError(f"--onnx {onnx_path}: file not found; write one with `fcnseg export`")
    model, ckpt = _as_model(model_or_checkpoint)
    model = model.eval()
    name = resolve_backend(name, device, precision) if onnx_path is None else name
    if name == "torch":
        if isinstance(precision, str):
            precision = resolve_precision(precision, device)
        return TorchBackend(model, precision, device)
    _fp32_precision(name, precision, device)
    if name == "compile":
        return CompileBackend(model.float(), device)
    if name in ("onnxruntime", "openvino"):
        _require(name)
        path = Path(onnx_path) if onnx_path is not None else cached_onnx(model.float(), ckpt)
        return OnnxRuntimeBackend(path) if name == "onnxruntime" else OpenVinoBackend(path)
    return AutoBackend(model.float(), ckpt, device)


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


class AutoBackend(Backend):
    """Chooses, per input size class, the fastest verified fp32 backend (module doc)."""

    def __init__(self, model: nn.Module, ckpt: dict | None, device: torch.device) -> None:
        self.model, self.ckpt, self.device = model, ckpt, device
        self.candidates = auto_candidates()
        self._built: dict[str, Backend] = {}
        self._choice: dict[str, str] = {}
        self._hash = model_hash(model)
        self.name = "auto"
        self.report: dict[str, dict] = {}

    def _backend(self, name: str) -> Backend:
        if name not in self._built:
            if name == "torch":
                self._built[name] = TorchBackend(self.model, resolve_precision("fp32", self.device, quiet=True), self.device)
            elif name == "compile":
                self._built[name] = CompileBackend(self.model, self.device)
            else:
                path = cached_onnx(self.model, self.ckpt)
                self._built[name] = OnnxRuntimeBackend(path) if name == "onnxruntime" else OpenVinoBackend(path)
        return self._built[name]

    def _key(self, cls: str) -> str:
        return f"{self._hash} | {cpu_fingerprint()} | {versions()} | {cls}"

    def choose(self, x: torch.Tensor) -> str:
        """The backend for inputs shaped like ``x``: cached, or probed now."""
        from fcnseg.export import compare, parity_inputs, switch_flips_allowed

        cls = size_class(tuple(x.shape))
        if cls in self._choice:
            return self._choice[cls]
        key = self._key(cls)
        store = cache_dir() / "auto.json"
        cache = {}
        with contextlib.suppress(OSError, ValueError):
            cache = json.loads(store.read_text())
        hit = cache.get(key)
        if hit and hit.get("backend") in self.candidates:
            self._choice[cls] = hit["backend"]
            self.report[cls] = hit
            return hit["backend"]
        probe = parity_inputs([tuple(x.shape[-2:])], x.shape[1])[0].repeat(x.shape[0], 1, 1, 1)
        with torch.no_grad():
            ref = self.model(probe.to(self.device)).float()
        figures, runs = {}, {}
        for name in self.candidates:  # build, warm up and verify each
            try:
                run = self._backend(name)
                p = compare(ref, run(probe), switch_flips_allowed(self.model))
            except Exception as e:  # an engine that cannot run this model is skipped, said why
                log.warning("auto: %s skipped (%s: %s)", name, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                figures[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            figures[name] = {"rel_diff": p.rel, "agreement": p.agreement, "verified": p.ok}
            runs[name] = run
            if not p.ok:
                log.warning("auto: %s not verified for this model (%s); not used", name, p)
        for name, seconds in time_interleaved(runs, probe).items():
            figures[name]["ms"] = round(1000 * seconds, 2)
        ok = {n: f["ms"] for n, f in figures.items() if f.get("verified") and "ms" in f}
        best = min(ok, key=lambda n: ok[n]) if ok else "torch"
        entry = {"backend": best, "shape": list(x.shape), "figures": figures, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        log.info("auto: %s for %s (%s)", best, cls, ", ".join(f"{n} {f['ms']} ms" for n, f in figures.items() if "ms" in f))
        cache[key] = entry
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, store)
        # drop the losers' engines (memory); keep the winner
        for n in list(self._built):
            if n != best:
                del self._built[n]
        self._choice[cls] = best
        self.report[cls] = entry
        return best

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._backend(self.choose(x))(x)


def backend_name(model) -> str:
    """What runs ``model``, as eval/predict/serve report it: ``torch`` for a module; a backend's name, ``auto (onnxruntime)`` for auto."""
    if isinstance(model, nn.Module):
        return "torch"
    name = getattr(model, "name", type(model).__name__)
    chosen = sorted({e["backend"] for e in getattr(model, "report", {}).values()})
    return f"{name} ({', '.join(chosen)})" if chosen else name
