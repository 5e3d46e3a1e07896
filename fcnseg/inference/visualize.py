"""Pictures of a training run: ``curves.png`` (loss, mean IU, pixel accuracy) and
``samples/epoch_N.png`` (image | ground truth | prediction); of an evaluation:
``confusion.png``. Matplotlib, headless (Agg)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colorize(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    try:
        from fcnseg.data.show import colorize
    except ImportError:  # pragma: no cover - the data package ships show.py
        table = np.zeros((256, 3), np.uint8)
        table[: len(palette)] = palette
        table[ignore_index] = (224, 224, 192)
        return table[np.asarray(mask, np.int64)]
    return colorize(mask, palette, ignore_index=ignore_index)


def plot_curves(events: Sequence[dict], path: str | os.PathLike) -> None:
    """Training loss and validation mean IU / pixel accuracy against epochs (fractional).

    ``events``: ``metrics.jsonl`` records; ``train`` events carry ``loss``, ``eval`` events
    ``mean_iou`` and ``pixel_acc``, both an ``epoch`` (float)."""
    plt = _pyplot()
    train = [e for e in events if e.get("event") == "train" and e.get("loss") is not None]
    evals = [e for e in events if e.get("event") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    if train:
        ax.plot([e["epoch"] for e in train], [e["loss"] for e in train], lw=1.2)
        if all(e["loss"] > 0 for e in train):
            ax.set_yscale("log")
    ax.set_title("training loss")
    for ax, key, title in ((axes[1], "mean_iou", "val mean IU"), (axes[2], "pixel_acc", "val pixel accuracy")):
        xs = [e["epoch"] for e in evals if _finite(e.get(key))]
        ys = [e[key] for e in evals if _finite(e.get(key))]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2)
            best = int(np.argmax(ys))
            ax.annotate(f"{ys[best]:.3f}", (xs[best], ys[best]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    # fixed margins for this fixed figure: tight_layout measured every text and took ~0.35 s of
    # a ~0.8 s redraw on 2 cores of an AMD EPYC [AVX2 only: no AVX-512, no native bf16], and the run redraws it at every validation
    fig.subplots_adjust(left=0.045, right=0.99, bottom=0.15, top=0.91, wspace=0.2)
    _save(fig, path)
    plt.close(fig)


def save_sample_grid(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    ignore_index: int = 255,
) -> None:
    """One row per sample: image uint8 (H, W, 3), ground truth and prediction (H, W) class
    indices drawn in ``palette`` (K, 3) (ignored pixels in cream)."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for r in range(n):
        panels = (images[r], _colorize(targets[r], palette, ignore_index), _colorize(preds[r], palette, ignore_index))
        for c, (panel, name) in enumerate(zip(panels, ("image", "ground truth", "prediction"), strict=True)):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _save(fig, path: str | os.PathLike) -> None:
    """Writes through a temporary name so a reader never sees half a PNG."""
    from fcnseg.checkpoint import write_error

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, e, what="plot") from None


def plot_confusion(confusion: list[list[int]], classes: Sequence[str], out_dir: str | os.PathLike) -> Path:
    """Writes `confusion.png` in `out_dir`: rows (truth) normalised to sum 1, class names on
    both axes. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    side = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (rows normalised)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if m[i, j] > 0:
                    ax.text(
                        j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(out_dir) / "confusion.png"
    _save(fig, path)
    return path

def draw_samples(model, dataset, n: int, path: str | os.PathLike, *, mean, std, palette: np.ndarray, device, precision, title: str = "") -> None:
    """``path``: the first ``n`` images of ``dataset`` (raw pairs) | their ground truth |
    ``model``'s prediction (in eval mode; the caller restores train mode)."""
    import torch

    from fcnseg.inference.segment import labels, segment

    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    images, targets, preds = [], [], []
    model.eval()
    with torch.no_grad():
        for i in range(n):
            image, mask = dataset.load(i)
            x = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean_t) / std_t
            score = segment(model, [x], out_sizes=[np.shape(mask)], device=device, precision=precision)[0]
            images.append(image)
            targets.append(np.asarray(mask))
            preds.append(labels(score).cpu().numpy())
    save_sample_grid(images, targets, preds, palette, path, title=title)
