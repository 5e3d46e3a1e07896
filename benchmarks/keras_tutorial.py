"""The Keras FCN of the TensorFlow segmentation tutorial fcnseg grew from, rebuilt for timing.
(The tutorial's text is not in the repository; beside a checkout it sits at
``../shared/seed/fcn_tutorial_zh.txt``. Nothing here reads it.)

VGG16 trunk (``include_top=False``, ``weights=None``: nothing is downloaded) as a
multi-output model on block5_conv3 / block4_conv3 / block3_conv3 / block5_pool; a decoder
of 3x3 stride-2 ``Conv2DTranspose`` + ReLU and 3x3 ``Conv2D`` + ReLU with ``tf.add`` skips;
a final ``Conv2DTranspose`` to the classes with softmax; Adam and
``sparse_categorical_crossentropy``, compiled with the tutorial's arguments (Keras's own
defaults otherwise, which on Keras 3 include XLA ``jit_compile="auto"``).

The tutorial freezes the trunk (``multiout_model.trainable = False``); ``--trainable``
trains it too.

Run in an environment with TensorFlow (not torch: importing both would inflate the peak
RSS figure). Prints one JSON object with the same keys as ``fcnseg bench --json``::

    python benchmarks/keras_tutorial.py --size 224 --batch 8 --steps 5 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _hwm_mb() -> float:
    """Peak resident set (VmHWM) of this process in MiB."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)\s+kB", f.read()).group(1)) / 1024


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS, so the next reading covers one phase only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn, n: int) -> tuple[float, float, float]:
    """(total seconds of n calls, fastest call, process CPU seconds): as fcnseg.bench."""
    best, c0, t0 = float("inf"), _cpu_seconds(), time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return time.perf_counter() - t0, best, _cpu_seconds() - c0


def _cpu_figures(phase: str, images: int, seconds: float, cpu_s: float, cores: int) -> dict:
    """As fcnseg.bench: the share of its cores the process got, and images/s estimated
    from CPU time as if it had them all."""
    return {
        f"{phase}_cpu_share": cpu_s / (seconds * cores),
        f"{phase}_img_s_cpu": images * cores / cpu_s,
    }


def build_model(size: tuple[int, int] = (224, 224), num_classes: int = 3, trainable: bool = False):
    """The tutorial's network, layer for layer; ``trainable=False`` freezes the VGG16 trunk
    as the tutorial does. Input ``(N, H, W, 3)`` in [-1, 1]; output softmax ``(N, H, W, K)``."""
    import tensorflow as tf

    h, w = size
    conv_base = tf.keras.applications.VGG16(weights=None, input_shape=(h, w, 3), include_top=False)
    layer_names = ["block5_conv3", "block4_conv3", "block3_conv3", "block5_pool"]
    outputs = [conv_base.get_layer(name).output for name in layer_names]
    multiout_model = tf.keras.models.Model(inputs=conv_base.input, outputs=outputs)
    multiout_model.trainable = trainable

    layers = tf.keras.layers
    inputs = layers.Input(shape=(h, w, 3))
    out_block5_conv3, out_block4_conv3, out_block3_conv3, out = multiout_model(inputs)
    x1 = layers.Conv2DTranspose(512, 3, strides=2, padding="same", activation="relu")(out)
    x1 = layers.Conv2D(512, 3, padding="same", activation="relu")(x1)
    x2 = layers.Add()([x1, out_block5_conv3])  # the tutorial's tf.add
    x2 = layers.Conv2DTranspose(512, 3, strides=2, padding="same", activation="relu")(x2)
    x3 = layers.Add()([x2, out_block4_conv3])
    x3 = layers.Conv2DTranspose(256, 3, strides=2, padding="same", activation="relu")(x3)
    x3 = layers.Conv2D(256, 3, padding="same", activation="relu")(x3)
    x4 = layers.Add()([x3, out_block3_conv3])
    x5 = layers.Conv2DTranspose(128, 3, strides=2, padding="same", activation="relu")(x4)
    x5 = layers.Conv2D(128, 3, padding="same", activation="relu")(x5)
    prediction = layers.Conv2DTranspose(
        num_classes, 3, strides=2, padding="same", activation="softmax"
    )(x5)
    model = tf.keras.models.Model(inputs=inputs, outputs=prediction)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"])
    return model


def benchmark(
    size: tuple[int, int] = (224, 224),
    batch: int = 8,
    num_classes: int = 3,
    steps: int = 5,
    warmup: int = 2,
    trainable: bool = False,
    phases: tuple[str, ...] = ("infer", "train"),
    threads: int | None = None,
) -> dict:
    """Time ``predict_on_batch`` and ``train_on_batch`` on one synthetic batch; inference
    first, each phase's peak RSS measured from a reset high-water mark."""
    import numpy as np
    import tensorflow as tf

    if threads:  # before any op runs
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = build_model(size, num_classes, trainable)
    cores = threads or len(os.sched_getaffinity(0))  # TF's default intra-op pool size
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, *size, 3)).astype("float32")
    y = rng.integers(0, num_classes, (batch, *size, 1)).astype("int32")
    r: dict = {
        "model": "keras-tutorial",
        "backbone": "vgg16",
        "size": list(size),
        "batch": batch,
        "num_classes": num_classes,
        "precision": "fp32",
        "device": "cpu",
        "freeze_backbone": not trainable,
        "steps": steps,
        "warmup": warmup,
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else "",
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "threads": cores,
    }
    if "infer" in phases:
        _reset_hwm()
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            model.predict_on_batch(x)
        r["infer_warmup_s"] = time.perf_counter() - t0
        seconds, best, cpu_s = _timed(lambda: model.predict_on_batch(x), steps)
        r["infer_ms_per_batch"] = 1000 * seconds / steps
        r["infer_img_s"] = batch * steps / seconds
        r["infer_img_s_best"] = batch / best
        r.update(_cpu_figures("infer", batch * steps, seconds, cpu_s, cores))
        r["infer_peak_mem_mb"] = _hwm_mb()
    if "train" in phases:
        _reset_hwm()
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            model.train_on_batch(x, y)
        r["train_warmup_s"] = time.perf_counter() - t0
        seconds, best, cpu_s = _timed(lambda: model.train_on_batch(x, y), steps)
        r["train_ms_per_step"] = 1000 * seconds / steps
        r["train_img_s"] = batch * steps / seconds
        r["train_img_s_best"] = batch / best
        r.update(_cpu_figures("train", batch * steps, seconds, cpu_s, cores))
        loss = model.train_on_batch(x, y)  # untimed: the loss is only a sanity check
        r["peak_mem_mb"] = _hwm_mb()
        r["memory_source"] = "rss_hwm"
        r["last_loss"] = float(np.asarray(loss).ravel()[0])
    r["jit_compile"] = bool(getattr(model, "jit_compile", False))
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs="+", default=[224], metavar="H [W]")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trainable", action="store_true", help="train the VGG16 trunk too")
    p.add_argument("--only", choices=("train", "infer"))
    p.add_argument("--threads", type=int, help="TF intra- and inter-op threads (default: all)")
    args = p.parse_args(argv)
    if len(args.size) > 2 or min(args.size) < 32 or args.batch < 1 or args.steps < 1:
        p.error("need --size H [W] >= 32, --batch >= 1, --steps >= 1")
    size = (args.size[0], args.size[-1])
    phases = (args.only,) if args.only else ("infer", "train")
    result = benchmark(
        size,
        args.batch,
        args.num_classes,
        args.steps,
        args.warmup,
        args.trainable,
        phases,
        args.threads,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
