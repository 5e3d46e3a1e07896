"""Speed, memory and FLOPs benchmark of a segmentation model on synthetic (or real) batches.

``benchmark(...)`` times training steps (the trainer's own step, ``fcnseg.training.step``:
forward + loss + backward + Adam step, with the same autocast / channels_last policy) and inference batches (eval mode,
``inference_mode``), counts FLOPs per image with ``torch.utils.flop_counter.FlopCounterMode``
and measures the machine's matmul peak in the same dtype, so the achieved TFLOP/s can be read
as a fraction of what the hardware does on its best-case kernel.

Peak memory on CPU is the process resident-set high-water mark (``VmHWM``) over a phase,
reset at the phase start through ``/proc/self/clear_refs``; it counts everything resident
in the process (the torch runtime, weights, optimizer state, activations). Run it in a fresh
process (``fcnseg bench`` does) for a figure that earlier work in the process cannot inflate.
On CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.data.base import IGNORE_INDEX
from fcnseg.errors import ConfigError
from fcnseg.precision import Precision, resolve_device, resolve_precision
from fcnseg.weights import IMAGENET_MEAN, IMAGENET_STD

# ----------------------------------------------------------------------------- memory


def _read_hwm_mb() -> float | None:
    """The process's peak resident set (VmHWM) in MiB, or None where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+)\s+kB", text)
    return int(m.group(1)) / 1024 if m else None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring a phase's peak memory in MiB into ``.mb``.

    CPU: process RSS high-water mark, reset at entry (falls back to ``ru_maxrss``, the
    whole process lifetime's peak, where the reset is unavailable). CUDA: peak allocated.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float = float("nan")
        self.source = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "cuda_max_allocated"
        elif _reset_hwm() and _read_hwm_mb() is not None:
            self.source = "rss_hwm"
        else:
            self.source = "ru_maxrss"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.source == "rss_hwm":
            self.mb = _read_hwm_mb() or float("nan")
        else:  # ru_maxrss is in KiB on Linux
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- FLOPs


def count_flops(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    *,
    train: bool = False,
    num_classes: int | None = None,
) -> int:
    """FLOPs of one forward pass (``train=False``) or forward + loss + backward
    (``train=True``) of ``model`` on a float input of ``input_shape`` ``(N, C, H, W)``.

    Counted by ``FlopCounterMode`` (convolutions, transposed convolutions, matmuls and their
    backward; a multiply-add counts 2). Element-wise ops are not counted, as is customary.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(input_shape, device=device)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        if train:
            model.train()
            with counter:
                out = model(x)
                if num_classes is None:
                    loss = out.float().mean()
                else:
                    target = torch.randint(
                        0, num_classes, (out.shape[0], *out.shape[2:]), device=device
                    )
                    loss = F.cross_entropy(out.float(), target, ignore_index=IGNORE_INDEX)
                loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with counter, torch.no_grad():
                model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- matmul peak

_PEAK_CACHE: dict[tuple[str, str, int], tuple[float, float]] = {}


def _matmul_peak(
    dtype: torch.dtype, device: torch.device, n: int, reps: int
) -> tuple[float, float]:
    """(TFLOP/s of the fastest of ``reps`` matmuls, TFLOP/s from the least CPU time of one
    (CPU only, scaled to all threads; nan on CUDA)).

    On CUDA an fp32 matmul runs under the convolutions' TF32 policy
    (``torch.backends.cudnn.allow_tf32``, on by default), so that fp32 convolutions, which
    cuDNN runs in TF32, are measured against the peak of the same arithmetic."""
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    key = (str(dtype), str(device), n, tf32)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32  # no effect on CPU or bf16 matmuls
    try:
        torch.mm(a, b)  # first call selects / packs kernels
        best, best_cpu = math.inf, math.inf
        for _ in range(reps):
            _sync(device)
            c0, t0 = _cpu_seconds(), time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, _cpu_seconds() - c0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    flop = 2 * n**3
    cpu_peak = float("nan")
    if device.type == "cpu" and best_cpu > 0:
        cpu_peak = flop * torch.get_num_threads() / best_cpu / 1e12
    _PEAK_CACHE[key] = (flop / best / 1e12, cpu_peak)
    return _PEAK_CACHE[key]


def matmul_peak_tflops(
    dtype: torch.dtype, device: torch.device | str = "cpu", *, n: int = 4096, reps: int = 3
) -> float:
    """Best-of-``reps`` TFLOP/s of an ``n x n`` @ ``n x n`` matmul in ``dtype`` on ``device``:
    the practical peak that the benchmark's achieved TFLOP/s is compared against."""
    return _matmul_peak(dtype, torch.device(device), n, reps)[0]


# ----------------------------------------------------------------------------- steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam as training builds it (``fcnseg.training.step.build_optimizer``: the fused kernel
    where this torch has it for the device, else ``foreach``)."""
    from fcnseg.training.step import build_optimizer

    params = [p for p in params if p.requires_grad]
    return build_optimizer([{"params": params}], name="adam", lr=lr, momentum=0.0, device=device)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    device: torch.device,
    **options: Any,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trainer's own training step (``fcnseg.training.step.TrainStep``: forward and loss
    under autocast, from the coarse scores where the model's last upsampling is fixed,
    backward, (scaled) optimizer step) as ``step(x (N, C, H, W), target (N, H, W) int64) ->
    loss`` (a 0-d tensor: no host synchronisation). ``options``: TrainStep's keywords
    (``class_weight``, ``hard_pixels``, ``aux_loss``, ``copy_paste``, ...)."""
    from fcnseg.training.step import TrainStep

    step = TrainStep(model, optimizer, precision=precision, device=device, **options)
    return lambda x, target: step([(x, target)])


def _cpu_seconds() -> float:
    """CPU time (user + system) used so far by all threads of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Callable[[], Any], n: int, device: torch.device) -> tuple[float, float, float]:
    """``(total seconds for n calls of fn, fastest single call, process CPU seconds)``.
    On CUDA one sync at each end and none inside (the fastest call is then the mean); on
    CPU each call is timed too, which costs nothing there and gives a figure robust to
    other load."""
    _sync(device)
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    best = math.inf
    for _ in range(n):
        t = time.perf_counter()
        fn()
        if device.type != "cuda":
            best = min(best, time.perf_counter() - t)
    _sync(device)
    total = time.perf_counter() - t0
    return total, (total / n if device.type == "cuda" else best), _cpu_seconds() - c0


def _cpu_figures(phase: str, images: int, seconds: float, cpu_s: float, dev: torch.device) -> dict:
    """On CPU: ``<phase>_cpu_share``, the fraction of its threads' wall time the process got
    (1.0 = the cores were its own; less = other load), and ``<phase>_img_s_cpu``, images per
    second estimated from CPU time as if it had all its threads' cores (a figure for busy
    machines; spinning threads make it a slight underestimate)."""
    if dev.type != "cpu" or cpu_s <= 0:
        return {}
    n = torch.get_num_threads()
    return {
        f"{phase}_cpu_share": cpu_s / (seconds * n),
        f"{phase}_img_s_cpu": images * n / cpu_s,
    }


def synthetic_batch(
    batch: int,
    in_channels: int,
    size: tuple[int, int],
    num_classes: int,
    device: torch.device,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, *size, generator=g)
    y = torch.randint(0, num_classes, (batch, *size), generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, memory_format=fmt), y.to(device)


# ----------------------------------------------------------------------------- benchmark


def _parse_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"--size must be H or H W with positive integers, got {size}")
    return size  # type: ignore[return-value]


def _build(
    model: str | nn.Module,
    backbone: str,
    num_classes: int,
    in_channels: int,
    model_options: dict[str, Any] | None,
) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from fcnseg.models import build_model

    return build_model(
        model,
        backbone=backbone,
        num_classes=num_classes,
        in_channels=in_channels,
        **(model_options or {}),
    )


def _freeze_backbone(net: nn.Module) -> None:
    backbone = getattr(net, "backbone", None)
    if backbone is None:
        raise ConfigError("--freeze-backbone: this model has no .backbone to freeze")
    backbone.requires_grad_(False)


def benchmark(
    model: str | nn.Module = "fcn8s",
    *,
    backbone: str = "vgg16",
    size: int | tuple[int, int] = 224,
    batch: int = 8,
    precision: str = "auto",
    compile: bool = False,
    device: str | None = "cpu",
    num_classes: int = 21,
    in_channels: int = 3,
    steps: int = 10,
    warmup: int = 3,
    freeze_backbone: bool = False,
    phases: tuple[str, ...] = ("infer", "train"),
    flops: bool = True,
    peak: bool = True,
    peak_n: int = 4096,
    model_options: dict[str, Any] | None = None,
    data: str | None = None,
    data_root: str | None = None,
    data_options: dict[str, Any] | None = None,
    workers: int = 2,
    lr: float = 1e-4,
) -> dict[str, Any]:
    """Benchmark ``model`` (a registry name, built with ``backbone``/``num_classes``, or an
    ``nn.Module``) on batches ``(batch, in_channels, H, W)``.

    Returns a flat dict: the configuration echoed, ``infer_ms_per_batch``, ``infer_img_s``,
    ``infer_peak_mem_mb``, ``train_ms_per_step``, ``train_img_s``, ``peak_mem_mb`` (training),
    ``flops_per_img`` (forward), ``train_flops_per_img`` (forward + backward),
    ``infer_tflops``, ``train_tflops``, ``peak_tflops`` (matmul in the autocast dtype) and the
    fractions of peak; with ``data`` also ``loader_img_s`` and ``together_img_s``. On CPU,
    ``*_img_s_best`` (fastest step) and the ``*_cpu`` figures (from process CPU time, as if
    the process had its threads' cores to itself; see ``_cpu_figures``) are robust to other
    load on the machine, and ``*_cpu_share`` says how much of its cores it got.
    Inference runs before training so that training's allocations cannot inflate the
    inference memory figure.
    """
    h, w = _parse_size(size)
    for name, value, low in (
        ("batch", batch, 1),
        ("steps", steps, 1),
        ("warmup", warmup, 0),
        ("num-classes", num_classes, 1),
        ("workers", workers, 0),
    ):
        if int(value) < low:
            raise ConfigError(f"--{name} must be >= {low}, got {value}")
    unknown = set(phases) - {"infer", "train"}
    if unknown or not phases:
        raise ConfigError(f"phases must be a non-empty subset of ('infer', 'train'), got {phases}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    loader = None
    if data is not None:  # first: a dataset error should not wait for the timings
        if "train" not in phases:
            raise ConfigError("--data times the training input pipeline; drop --only infer")
        loader = _make_loader(
            data, data_root, data_options or {}, (h, w), batch, workers, dev, backbone
        )
        num_classes = int(loader.dataset.num_classes)

    net = _build(model, backbone, num_classes, in_channels, model_options)
    if freeze_backbone:
        _freeze_backbone(net)
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    net = net.to(dev, memory_format=fmt)
    runner: nn.Module = torch.compile(net) if compile else net
    x, y = synthetic_batch(batch, in_channels, (h, w), num_classes, dev, prec.channels_last)

    result: dict[str, Any] = {
        "model": model if isinstance(model, str) else type(model).__name__,
        "backbone": backbone if isinstance(model, str) else None,
        "size": [h, w],
        "batch": batch,
        "num_classes": num_classes,
        "precision": prec.name,
        "channels_last": prec.channels_last,
        "device": str(dev),
        "compile": bool(compile),
        "freeze_backbone": bool(freeze_backbone),
        "steps": steps,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in net.parameters()),
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }
    if model_options:
        result.update({f"model_{k}": v for k, v in model_options.items()})
    if loader is not None:
        result.update({"data": data, "workers": workers})

    if "infer" in phases:
        runner.eval()
        if compile:

            def infer() -> None:
                with torch.inference_mode(), prec.autocast(dev):
                    runner(x)
        else:  # the engine eval/predict/serve run (fcnseg.inference.loader)
            from fcnseg.inference.loader import load_engine

            engine = load_engine(net, "torch", prec, dev)

            def infer() -> None:
                with torch.inference_mode():
                    engine(x)

        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            for _ in range(max(warmup, 1 if compile else 0)):
                infer()
            _sync(dev)
            result["infer_warmup_s"] = time.perf_counter() - t0
            seconds, best, cpu_s = _timed(infer, steps, dev)
        result["infer_ms_per_batch"] = 1000 * seconds / steps
        result["infer_img_s"] = batch * steps / seconds
        result["infer_img_s_best"] = batch / best
        result.update(_cpu_figures("infer", batch * steps, seconds, cpu_s, dev))
        result["infer_peak_mem_mb"] = mem.mb

    if "train" in phases:
        runner.train()
        if freeze_backbone:
            net.backbone.eval()  # as training does: frozen BN statistics stay as loaded
        optimizer = make_optimizer(net.parameters(), lr, dev)
        step = make_train_step(runner, optimizer, prec, dev)
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            for _ in range(max(warmup, 1)):  # >= 1: creates the optimizer state
                step(x, y)
            _sync(dev)
            result["train_warmup_s"] = time.perf_counter() - t0
            seconds, best, cpu_s = _timed(lambda: step(x, y), steps, dev)
        result["train_ms_per_step"] = 1000 * seconds / steps
        result["train_img_s"] = batch * steps / seconds
        result["train_img_s_best"] = batch / best
        result.update(_cpu_figures("train", batch * steps, seconds, cpu_s, dev))
        result["peak_mem_mb"] = mem.mb
        result["memory_source"] = mem.source
        if loader is not None:
            result.update(_bench_data(loader, step, steps, warmup, prec, dev))
            result["input_bound"] = result["loader_img_s"] < result["train_img_s"]

    if flops:
        net.train()
        result["flops_per_img"] = count_flops(net, (1, in_channels, h, w))
        if "train" in phases:
            result["train_flops_per_img"] = count_flops(
                net, (1, in_channels, h, w), train=True, num_classes=num_classes
            )
    if peak:
        dtype = prec.dtype or torch.float32
        result["peak_tflops"], peak_cpu = _matmul_peak(dtype, dev, peak_n, 3)
        result["peak_matmul_n"] = peak_n
        if dev.type == "cpu":
            result["peak_tflops_cpu"] = peak_cpu
    if flops:
        if "infer" in phases:
            result["infer_tflops"] = result["flops_per_img"] * result["infer_img_s"] / 1e12
        if "train" in phases:
            result["train_tflops"] = result["train_flops_per_img"] * result["train_img_s"] / 1e12
        for phase in phases:
            if f"{phase}_img_s_cpu" in result:
                flop = result["flops_per_img" if phase == "infer" else "train_flops_per_img"]
                result[f"{phase}_tflops_cpu"] = flop * result[f"{phase}_img_s_cpu"] / 1e12
            if peak:
                result[f"{phase}_frac_of_peak"] = result[f"{phase}_tflops"] / result["peak_tflops"]
                if f"{phase}_tflops_cpu" in result and "peak_tflops_cpu" in result:
                    result[f"{phase}_frac_of_peak_cpu"] = (
                        result[f"{phase}_tflops_cpu"] / result["peak_tflops_cpu"]
                    )
    return result


# ----------------------------------------------------------------------------- real data


def _make_loader(
    name: str,
    root: str | None,
    options: dict[str, Any],
    size: tuple[int, int],
    batch: int,
    workers: int,
    dev: torch.device,
    backbone: str,
) -> torch.utils.data.DataLoader:
    """The training pipeline's loader: ``split="train"``, the train transforms cropping to
    ``size``, ``pad_collate``, ``workers`` worker processes, shuffled, full batches."""
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import pad_collate, train_transforms

    try:
        from fcnseg.weights import preprocessing

        stats = preprocessing(backbone, "imagenet")
        mean, std = tuple(stats["mean"]), tuple(stats["std"])
    except (ImportError, ConfigError):  # a model passed as a module has no backbone name
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    crop = size[0] if size[0] == size[1] else size
    dataset = build_dataset(
        name,
        root=root,
        split="train",
        transforms=train_transforms(crop, mean=mean, std=std),
        **options,
    )
    if len(dataset) < batch:
        raise ConfigError(f"--data {name}: {len(dataset)} images is less than one batch of {batch}")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=pad_collate,
        pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )


def _bench_data(
    loader: torch.utils.data.DataLoader,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    warmup: int,
    prec: Precision,
    dev: torch.device,
) -> dict[str, Any]:
    """Loader alone, then loader + training step, each over ``steps`` batches."""
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    batch = loader.batch_size

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    it = batches()
    for _ in range(max(warmup, 1)):  # worker start-up is not throughput
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_s = time.perf_counter() - t0

    def together() -> None:
        images, masks = next(it)
        step(images.to(dev, memory_format=fmt, non_blocking=True), masks.to(dev, non_blocking=True))

    together_s, _, _ = _timed(together, steps, dev)
    return {
        "dataset_len": len(loader.dataset),
        "loader_img_s": batch * steps / loader_s,
        "together_img_s": batch * steps / together_s,
    }


# ----------------------------------------------------------------------------- profile


def profile_train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: Precision,
    device: torch.device,
    *,
    steps: int = 3,
    row_limit: int = 30,
) -> str:
    """A ``torch.profiler`` table (self CPU time) of ``steps`` training steps after one warm-up."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = make_optimizer(model.parameters(), 1e-4, device)
    step = make_train_step(model, optimizer, precision, device)
    step(x, y)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step(x, y)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=row_limit)


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, with the logical CPU count available."""
    name = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({n} CPUs)"
