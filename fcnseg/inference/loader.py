"""``load_engine``: the one place where the inference engine and its precision are chosen.

``Predictor`` (and so ``fcnseg predict`` and ``fcnseg serve``), ``evaluate_checkpoint``
(``fcnseg eval``), ``fcnseg export --verify`` and the benchmarks call it; it returns a
``Backend`` (``fcnseg.inference.backends``): ``engine(x (N, C, H, W) float32) -> logits``.

An explicit ``backend`` runs as asked (``torch`` in ``precision``; the others fp32, or the
``--onnx`` file given). ``auto`` (the default) chooses per machine and checkpoint:

- **exact candidates**: eager torch fp32, onnxruntime and OpenVINO fp32 — each verified against
  eager fp32 on the logits (max|Δlogit| <= 1e-4 x max|logit|) at every new input size class;
- **inexact candidates**: torch bf16 + channels_last and OpenVINO bf16 where the CPU has native
  bf16 (AVX512-BF16, AMX), onnxruntime int8 and OpenVINO int8 (the same QDQ file, calibrated
  on the run's training images; VNNI / AMX-INT8 where present) — each qualifies only after
  the **task check** (``fcnseg.inference.verify``): scored against eager fp32 on labelled images
  (the run's validation split by default), mean IU at most 0.3 points lower and no class IoU
  more than 1.0 lower;
- the fastest qualified candidate runs, timed on this machine in interleaved rounds; onnxruntime
  and OpenVINO (a session to start in every command) only when >= MIN_GAIN faster than torch.

Without labelled data (the run's data is not on this machine and none is named) the inexact
candidates cannot be checked: auto chooses among the exact ones and torch in its default
precision (bf16 where native, what ``--backend torch`` runs), so it is never slower than that.
With nothing to choose (no export extra, a GPU, ``--precision bf16|fp16``) auto is torch in
``precision``.

The check, the int8 calibration and the timing run once per checkpoint, machine, library
versions and data (``cache_dir()/engines.json``), with a progress line; the evidence (data,
images, mean IU of each candidate, per-class deltas, speed) is ``engine.evidence``: eval's JSON
and ``/v1/model`` return it, ``fcnseg export`` writes it as a model card.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.export.cache import cached_int8, cached_onnx, check_onnx_matches
from fcnseg.export.parity import compare, parity_inputs, switch_flips_allowed
from fcnseg.inference import backends as B
from fcnseg.inference.verify import (
    CHECK_SECONDS,
    MIN_CHECK_IMAGES,
    VERIFY_IMAGES,
    TaskData,
    Tolerance,
    judge,
    score_engine,
    task_data,
    train_data,
)
from fcnseg.precision import Precision, cpu_has_fast_bf16, describe, resolve_precision, tell

log = logging.getLogger("fcnseg")

EXACT = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}  # candidate -> family
INEXACT = {
    "torch (bf16)": "torch",
    "onnxruntime (int8)": "onnxruntime",
    "openvino (int8)": "openvino",
    "openvino (bf16)": "openvino",
}
CALIB_IMAGES = 32  # int8 calibration images auto uses (fcnseg export --int8: --calib-images)
# an engine with a session to start in every command (onnxruntime, OpenVINO: the file read and
# compiled, ~1-3 s) replaces torch only where it is at least this much faster at that input
# size: on an AMD EPYC [AVX2 only: no AVX-512, no native bf16] the exact engines were 1.13x eager fp32 on batches of 4 and
# made `fcnseg predict` of CamVid's 101 val frames slower than eager (15.8 vs 13.7 s, docs/deploy.md)
MIN_GAIN = 1.2


def fastest(ms: Mapping[str, float]) -> str:
    """The engine to run from their timings (``name -> ms``): the fastest, unless it is not a torch
    engine and the fastest torch one is within ``MIN_GAIN`` of it."""
    best = min(ms, key=ms.get)
    in_torch = [n for n in ms if n.startswith("torch")]
    if best.startswith("torch") or not in_torch:
        return best
    torch_best = min(in_torch, key=ms.get)
    return best if ms[torch_best] >= MIN_GAIN * ms[best] else torch_best


def candidate_names(device: torch.device) -> list[str]:
    """What ``auto`` may choose among on ``device`` (installed families of
    ``backends.AUTO_CANDIDATES``; bf16 only where the CPU runs it natively)."""
    families = set(B.auto_candidates())
    native_bf16 = device.type == "cpu" and cpu_has_fast_bf16()
    names = [n for n, f in EXACT.items() if f in families]
    for n, f in INEXACT.items():
        if f not in families or (n.endswith("(bf16)") and not native_bf16):
            continue
        if n.endswith("(int8)") and not B.installed("onnxruntime"):  # the quantizer
            continue
        names.append(n)
    return names


class Engines:
    """Builds (once) the engine of each candidate name for one model."""

    def __init__(self, model: nn.Module, ckpt: dict | None, device: torch.device, calib: Callable[[], list] | None = None) -> None:
        self.model, self.ckpt, self.device, self._calib = model, ckpt, device, calib
        self.built: dict[str, B.Backend] = {}

    def __call__(self, name: str) -> B.Backend:
        if name not in self.built:
            self.built[name] = self._build(name)
        return self.built[name]

    def drop(self, keep: set[str]) -> None:
        for n in list(self.built):
            if n not in keep:
                del self.built[n]

    def _build(self, name: str) -> B.Backend:
        if name == "torch":
            return B.TorchBackend(self.model, resolve_precision("fp32", self.device, quiet=True), self.device)
        if name == "torch (bf16)":  # its own copy: channels_last would change the fp32 reference's layout in place
            return B.TorchBackend(copy.deepcopy(self.model), resolve_precision("bf16", self.device, quiet=True), self.device)
        if name in ("onnxruntime", "openvino", "openvino (bf16)"):
            path = cached_onnx(self.model, self.ckpt)
            if name == "onnxruntime":
                return B.OnnxRuntimeBackend(path)
            return B.OpenVinoBackend(path, bf16=name.endswith("(bf16)"), int8=False)
        if name in ("onnxruntime (int8)", "openvino (int8)"):
            if self._calib is None:
                raise ConfigError("int8 needs calibration images")
            path = cached_int8(self.model, self.ckpt, self._calib)
            return B.OnnxRuntimeBackend(path) if name.startswith("onnxruntime") else B.OpenVinoBackend(path, int8=True)
        raise ConfigError(f"unknown engine {name!r}")


def _as_model(model_or_checkpoint) -> tuple[nn.Module, dict | None]:
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint

    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint, None
    ckpt = model_or_checkpoint if isinstance(model_or_checkpoint, dict) else load_checkpoint(model_or_checkpoint)
    return model_from_checkpoint(ckpt), ckpt


def load_engine(
    model_or_checkpoint: nn.Module | dict | str | os.PathLike,
    backend: str = "auto",
    precision: str | Precision = "auto",
    device: str | torch.device = "cpu",
    *,
    onnx_path: str | os.PathLike | None = None,
    data: str | None = None,
    data_root: str | os.PathLike | None = None,
    split: str | None = None,
    data_options: Mapping | None = None,
    tolerance: Tolerance | None = None,
    check_images: int | None = None,
) -> B.Backend:
    """The engine that runs a model, a checkpoint dict or a ``.pt`` path (module doc).

    ``backend``: auto, torch, compile, onnxruntime, openvino. ``precision``: what torch runs
    (auto: bf16 where native); the other explicit backends run fp32 (or the ``onnx_path`` file,
    e.g. an int8 export). For ``auto``, ``data``/``data_root``/``split``/``data_options`` name
    the labelled images of the task check (default: the checkpoint's validation data),
    ``tolerance`` its limits, ``check_images`` how many images it scores."""
    if backend not in B.BACKEND_NAMES:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(B.BACKEND_NAMES)}")
    device = torch.device(device)
    if backend != "torch" and backend != "auto" and device.type != "cpu":
        raise ConfigError(f"--backend {backend} runs on the CPU; use --device cpu (or --backend torch on {device})")
    if onnx_path is not None:
        if backend not in ("onnxruntime", "openvino"):
            raise ConfigError(f"--onnx FILE runs in --backend onnxruntime or openvino, not {backend}")
        if not Path(onnx_path).is_file():
            raise ConfigError(f"--onnx {onnx_path}: file not found; write one with `fcnseg export`")
    tolerance = tolerance or Tolerance()
    model, ckpt = _as_model(model_or_checkpoint)
    model = model.eval()
    name = B.resolve_backend(backend, device, precision) if onnx_path is None else backend
    if name == "torch":
        prec = precision if isinstance(precision, Precision) else resolve_precision(precision, device)
        engine = B.TorchBackend(model, prec, device)
        engine.evidence = {"choice": engine.name, "how": _how(backend, prec)}
        return engine
    B.fp32_only(name, precision)
    if name == "compile":
        return B.CompileBackend(model.float(), device)
    if name in ("onnxruntime", "openvino"):
        B.require(name)
        if onnx_path is not None:
            check_onnx_matches(Path(onnx_path), model)
        path = Path(onnx_path) if onnx_path is not None else cached_onnx(model.float(), ckpt)
        return B.OnnxRuntimeBackend(path) if name == "onnxruntime" else B.OpenVinoBackend(path)
    return _auto(model.float(), ckpt, device, data, data_root, split, data_options, tolerance, check_images)


def _how(asked: str, prec: Precision) -> str:
    if asked == "torch":
        return f"--backend torch; {describe(prec)}"
    return f"auto: nothing to choose (no export extra, a GPU, or an explicit --precision); {describe(prec)}"


def _auto(model, ckpt, device, data, data_root, split, data_options, tolerance, check_images) -> AutoBackend:
    names = candidate_names(device)
    task: TaskData | None = None
    named = data is not None or split is not None
    if ckpt is not None and any(n in INEXACT for n in names):
        task = task_data(
            ckpt, data, data_root, split, data_options=data_options,
            count=check_images or VERIFY_IMAGES, required=named,
        )

    def calib() -> list[torch.Tensor]:
        return _calibration(ckpt, task)

    engines = Engines(model, ckpt, device, calib if task is not None else None)
    if task is None:
        if ckpt is not None and any(n in INEXACT for n in names):
            log.info("engine check: the run's labelled data is not on this machine (--calib-data/--calib-root name some); bf16/int8 engines are not candidates")
        default = "torch (bf16)" if "torch (bf16)" in names else "torch"
        allowed = [n for n in names if n in EXACT or n == default]
        evidence = {
            "checked_on": None,
            "note": "no labelled data on this machine: only exact engines and torch in its default precision are candidates"
            + (" (pass --calib-data/--data-root to check bf16/int8)" if len(names) > len(allowed) else ""),
        }
        return AutoBackend(model, engines, allowed, set() if default == "torch" else {default}, evidence)
    evidence = check_candidates(model, ckpt, engines, names, task, tolerance)
    qualified = {n for n, f in evidence["candidates"].items() if f.get("qualified") and n in INEXACT}
    allowed = [n for n in names if n in EXACT or n in qualified]
    auto = AutoBackend(model, engines, allowed, qualified, evidence)
    auto.seed(evidence)
    return auto


def _calibration(ckpt: dict, task: TaskData | None, count: int = CALIB_IMAGES) -> list[torch.Tensor]:
    """int8 calibration images: the run's training split (evenly spread), else the check's."""
    source = train_data(ckpt, count) or task
    if source is None:
        raise ConfigError("int8 needs calibration images: pass --calib-data NAME --data-root DIR")
    return source.images[:count]


def _key(model_hash: str, task: TaskData, tolerance: Tolerance) -> str:
    return f"{model_hash} | {B.cpu_fingerprint()} | {B.versions()} | {task.key()} | {tolerance.max_miou_drop:g}/{tolerance.max_class_drop:g}"


def _store() -> Path:
    return B.cache_dir() / "engines.json"


def _read_store() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(_store().read_text())
        if isinstance(data, dict):
            return data
    return {}


def _write_store(key: str, entry: dict) -> None:
    store = _read_store()
    store[key] = entry
    with contextlib.suppress(OSError):
        path = _store()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(store, indent=1))
        os.replace(tmp, path)


# an inexact candidate's scoring in units of eager fp32's (bf16 and int8 run ~1.5-3x faster)
INEXACT_UNITS = 0.6


def fit_check(task: TaskData, per_image_s: float, inexact: int, seconds: float = CHECK_SECONDS) -> TaskData:
    """``task``, or fewer of its images (at least MIN_CHECK_IMAGES) where scoring eager fp32
    and ``inexact`` candidates on all of them at ``per_image_s`` would take over ``seconds``."""
    n = len(task.indices)
    fit = int(seconds / max(per_image_s * (1 + INEXACT_UNITS * inexact), 1e-9))
    if fit >= n or n <= MIN_CHECK_IMAGES:
        return task
    count = max(MIN_CHECK_IMAGES, fit)
    log.info("engine check: eager fp32 takes %.2f s an image here: %d of the %d images keep the check near %.0f s", per_image_s, count, n, seconds)
    return task.subset(count)


def check_candidates(model: nn.Module, ckpt: dict, engines: Engines, names: list[str], task: TaskData, tolerance: Tolerance) -> dict:
    """Scores eager fp32 and every candidate on ``task``, judges the inexact ones, times all
    that run on one check image (interleaved rounds), and returns the evidence; cached."""
    key = _key(B.model_hash(model), task, tolerance)
    hit = _read_store().get(key)
    if hit and set(hit.get("candidates", {})) >= set(names):
        hit["cached"] = True
        # the choice under this version's rule (MIN_GAIN), from the stored timings
        timed = {n: f["ms"] for n, f in hit["candidates"].items() if f.get("qualified") and "ms" in f}
        if timed:
            hit["choice"] = fastest(timed)
        return hit
    t0 = time.perf_counter()
    probe = task.images[0][None]
    with torch.no_grad():
        ref_logits = engines("torch")(probe)  # the first call warms up
        t = time.perf_counter()
        ref_logits = engines("torch")(probe)
        per_image = time.perf_counter() - t
    task = fit_check(task, per_image, sum(n in INEXACT for n in names))
    log.info(
        "engine check (once per checkpoint and machine): scoring %d candidates against eager fp32 on %s/%s (%d of %d images)",
        len(names), task.name, task.split, len(task.indices), task.total,
    )
    figures: dict[str, dict] = {}
    reference = score_engine(engines("torch"), task)
    figures["torch"] = {"exact": True, "mean_iou": reference["mean_iou"], "qualified": True}
    runs: dict[str, B.Backend] = {"torch": engines("torch")}
    for name in names:
        if name == "torch":
            continue
        t = time.perf_counter()
        try:
            engine = engines(name)
            if name in EXACT:
                p = compare(ref_logits, engine(probe), switch_flips_allowed(model))
                figures[name] = {"exact": True, "rel_diff": p.rel, "agreement": p.agreement, "qualified": p.ok,
                                 "reason": "logits match eager fp32" if p.ok else f"logits differ: {p}"}
            else:
                s = score_engine(engine, task)
                verdict = judge(reference, s, task.classes, tolerance)
                figures[name] = {"exact": False, "mean_iou": s["mean_iou"], **verdict}
        except Exception as e:  # an engine that cannot run this model is skipped, said why
            first = str(e).splitlines()[0][:200] if str(e) else ""
            log.warning("engine check: %s skipped (%s: %s)", name, type(e).__name__, first)
            figures[name] = {"qualified": False, "reason": f"{type(e).__name__}: {first}"}
            continue
        if figures[name]["qualified"]:
            runs[name] = engine
        f = figures[name]
        log.info(
            "  %-19s %s (%.0f s)", name,
            f"mean IU {f['mean_iou']:.2f} ({f['miou_delta']:+.2f}), worst class {f['worst_class']} {f['worst_class_delta']:+.2f}: "
            + ("qualifies" if f["qualified"] else f"refused: {f['reason']}") if "miou_delta" in f else f.get("reason", ""),
            time.perf_counter() - t,
        )
    for name, seconds in B.time_interleaved(runs, probe).items():
        figures[name]["ms"] = round(1000 * seconds, 2)
    ok = {n: f["ms"] for n, f in figures.items() if f.get("qualified") and "ms" in f}
    best = fastest(ok)
    entry = {
        "choice": best,
        "checked_on": task.describe(),
        "reference": {"engine": "torch fp32 (eager)", "mean_iou": reference["mean_iou"]},
        "tolerance": {"max_miou_drop": tolerance.max_miou_drop, "max_class_drop": tolerance.max_class_drop},
        "timed_at": list(probe.shape),
        "candidates": figures,
        "machine": B.cpu_fingerprint(),
        "versions": B.versions(),
        "seconds": round(time.perf_counter() - t0, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_store(key, entry)
    return entry


def summary(evidence: Mapping) -> str:
    """The engine choice in one line, e.g. ``engine: onnxruntime (int8), 3.2x eager fp32 at
    1x3x360x480 (24 vs 76 ms); on camvid/val (48 images) mean IU 63.48 vs 63.28 fp32 (+0.20),
    worst class Pole -0.41``."""
    choice = evidence.get("choice", "?")
    cands = evidence.get("candidates") or {}
    if not cands:
        return f"engine: {choice} ({evidence.get('how') or evidence.get('note') or 'exact: logits match eager fp32'})"
    f, ref = cands.get(choice, {}), cands.get("torch", {})
    line = f"engine: {choice}"
    if f.get("ms") and ref.get("ms"):
        shape = "x".join(str(v) for v in evidence.get("timed_at", []))
        line += f", {ref['ms'] / f['ms']:.1f}x eager fp32 at {shape} ({f['ms']:.0f} vs {ref['ms']:.0f} ms)"
    on = evidence.get("checked_on") or {}
    if "miou_delta" in f:
        line += (
            f"; on {on.get('data')}/{on.get('split')} ({on.get('images')} images) mean IU {f['mean_iou']:.2f} vs "
            f"{ref.get('mean_iou', float('nan')):.2f} fp32 ({f['miou_delta']:+.2f}), worst class {f['worst_class']} {f['worst_class_delta']:+.2f}"
        )
    elif choice in EXACT:
        line += " (exact: logits match eager fp32)"
    refused = [n for n, c in cands.items() if not c.get("qualified")]
    if refused:
        line += f"; refused: {', '.join(refused)}"
    if evidence.get("cached"):
        line += " [cached]"
    return line


class AutoBackend(B.Backend):
    """Runs the fastest of ``allowed`` per input size class: exact engines are checked on the
    logits at each new size class, inexact ones were qualified by the task check (or are torch
    in its default precision when there was no data to check on)."""

    def __init__(self, model: nn.Module, engines: Engines, allowed: list[str], inexact_ok: set[str], evidence: dict) -> None:
        self.model, self.engines, self.allowed, self.inexact_ok = model, engines, allowed, inexact_ok
        self.evidence = evidence
        self._choice: dict[str, str] = {}
        self._hash = B.model_hash(model)
        self.name = "auto"
        self.report: dict[str, dict] = {}
        self._told = False

    @property
    def precision_name(self) -> str:
        chosen = set(self._choice.values()) or {self.evidence.get("choice", "torch")}
        return ",".join(sorted({B.precision_of(n) for n in chosen}))

    def seed(self, evidence: dict) -> None:
        """Takes the check's timing as the choice for its size class."""
        shape = evidence.get("timed_at")
        if shape and evidence.get("choice") in self.allowed:
            cls = B.size_class(tuple(shape))
            self._choice[cls] = evidence["choice"]
            self.report[cls] = {"backend": evidence["choice"], "shape": shape, "from": "engine check"}

    def _key(self, cls: str) -> str:
        return f"{self._hash} | {B.cpu_fingerprint()} | {B.versions()} | {','.join(self.allowed)} | {cls}"

    def choose(self, x: torch.Tensor) -> str:
        """The engine for inputs shaped like ``x``: chosen already, cached, or probed now."""
        cls = B.size_class(tuple(x.shape))
        if cls in self._choice:
            return self._choice[cls]
        key = self._key(cls)
        store = B.cache_dir() / "auto.json"
        cache = {}
        with contextlib.suppress(OSError, ValueError):
            cache = json.loads(store.read_text())
        hit = cache.get(key)
        if hit:  # the choice under this version's rule (MIN_GAIN), from the stored timings
            timed = {n: f["ms"] for n, f in hit.get("figures", {}).items() if n in self.allowed and f.get("verified") and "ms" in f}
            if timed:
                hit = {**hit, "backend": fastest(timed)}
        if hit and hit.get("backend") in self.allowed:
            self._choice[cls] = hit["backend"]
            self.report[cls] = hit
            return hit["backend"]
        probe = parity_inputs([tuple(x.shape[-2:])], x.shape[1])[0].repeat(x.shape[0], 1, 1, 1)
        with torch.no_grad():
            ref = self.model(probe).float()
        figures, runs = {}, {}
        for name in self.allowed:
            try:
                run = self.engines(name)
                out = run(probe)
                if name in EXACT:
                    p = compare(ref, out, switch_flips_allowed(self.model))
                    figures[name] = {"rel_diff": p.rel, "agreement": p.agreement, "verified": p.ok}
                    if not p.ok:
                        log.warning("auto: %s not verified for this model (%s); not used", name, p)
                        continue
                else:
                    figures[name] = {"verified": "task check" if name in self.inexact_ok else "default precision"}
            except Exception as e:
                log.warning("auto: %s skipped (%s: %s)", name, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                figures[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            runs[name] = run
        for name, seconds in B.time_interleaved(runs, probe).items():
            figures[name]["ms"] = round(1000 * seconds, 2)
        ok = {n: figures[n]["ms"] for n in runs}
        best = fastest(ok) if ok else "torch"
        entry = {"backend": best, "shape": list(x.shape), "figures": figures, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        log.info("auto: %s for %s (%s)", best, cls, ", ".join(f"{n} {f['ms']} ms" for n, f in figures.items() if "ms" in f))
        cache[key] = entry
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, store)
        self.engines.drop(set(self._choice.values()) | {best})
        self._choice[cls] = best
        self.report[cls] = entry
        return best

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        name = self.choose(x)
        if not self._told:
            self._told = True
            if name.startswith("torch"):
                tell(self.engines(name).precision)
        return self.engines(name)(x)


def engine_evidence(engine) -> dict:
    """What eval's JSON, ``/v1/model`` and the model card report about the engine."""
    ev = dict(getattr(engine, "evidence", None) or {"choice": B.backend_name(engine)})
    report = getattr(engine, "report", None)
    if report:
        ev["by_size"] = {cls: e.get("backend") for cls, e in report.items()}
        if "choice" not in ev:  # no task check: the engine the probe chose
            ev["choice"] = ", ".join(sorted(set(ev["by_size"].values())))
    ev["summary"] = summary(ev)
    return ev
