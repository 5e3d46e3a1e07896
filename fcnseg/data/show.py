"""Draw masks: `colorize` and `overlay` (reused by prediction), and `show_dataset`, a PNG
grid of samples with their masks overlaid in the dataset's palette and a legend.

Ignored pixels (255) are drawn in `IGNORE_COLOR`, the cream VOC uses for its void
border, since black is already VOC's background colour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fcnseg.errors import DataError

IGNORE_COLOR = (224, 224, 192)


def colorize(
    mask: np.ndarray,
    palette: np.ndarray,
    *,
    ignore_index: int = 255,
    ignore_color: tuple[int, int, int] = IGNORE_COLOR,
) -> np.ndarray:
    """Class-index mask `(H, W)` -> RGB uint8 `(H, W, 3)` via `palette` `(K, 3)`.
    `ignore_index` pixels get `ignore_color`. Raises DataError for any other value >= K."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"colorize: mask must be (H, W), got shape {mask.shape}")
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    k = len(palette)
    table = np.zeros((max(k, ignore_index + 1), 3), dtype=np.uint8)
    table[:k] = palette
    table[ignore_index] = ignore_color
    values = mask.astype(np.int64)
    bad = (values < 0) | (values >= len(table)) | ((values >= k) & (values != ignore_index))
    if bad.any():
        raise DataError(
            f"colorize: mask value {int(values[bad][0])} is not a class (0..{k - 1}) nor "
            f"ignore ({ignore_index})"
        )
    return table[values]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    *,
    ignore_index: int = 255,
    ignore_color: tuple[int, int, int] = IGNORE_COLOR,
) -> np.ndarray:
    """Blend the colorized mask over the image: `(1 - alpha) * image + alpha * colour`.

    `image` uint8 `(H, W, 3)` (or `(H, W)` grey), `mask` `(H, W)` class indices, `palette`
    uint8 `(K, 3)`, `alpha` in [0, 1]. Returns uint8 `(H, W, 3)`.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"overlay: image must be (H, W, 3), got shape {image.shape}")
    if image.shape[:2] != np.shape(mask):
        raise DataError(
            f"overlay: image is {image.shape[0]}x{image.shape[1]} but the mask is "
            f"{np.shape(mask)[0]}x{np.shape(mask)[1]}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"overlay: alpha must be in [0, 1], got {alpha}")
    colours = colorize(mask, palette, ignore_index=ignore_index, ignore_color=ignore_color)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def grid_size(n: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of the sample grid for `n` samples and at most `cols` columns."""
    cols = max(1, min(cols, n))
    return -(-n // cols), cols


def show_dataset(
    dataset: Any,
    out_png: str | os.PathLike,
    *,
    n: int = 8,
    cols: int = 4,
    alpha: float = 0.5,
    seed: int = 0,
    tile_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG grid of `n` random samples (seeded) with masks overlaid in the palette,
    each titled with its index and size (W x H), and a legend of the classes present plus
    ignore.

    The image is `cols * tile_inches * dpi` pixels wide (fewer columns if `n` is smaller);
    each row is `tile_inches * aspect + 0.25` inches tall, `aspect` being the median H/W of
    the samples (clipped to 0.5..2), plus a legend band. Returns the path.
    """
    # a Figure on an Agg canvas: no pyplot state, no backend switch in the user's session
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    total = len(dataset)
    if total == 0:
        raise DataError("the dataset is empty: nothing to show")
    if n < 1 or cols < 1:
        raise DataError(f"show needs n >= 1 and cols >= 1, got n={n}, cols={cols}")
    n = min(n, total)
    indices = sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
    palette = np.asarray(dataset.palette, dtype=np.uint8).reshape(-1, 3)
    ignore = int(getattr(dataset, "ignore_index", 255))
    classes = list(dataset.classes)

    rows, cols = grid_size(n, cols)
    present: set[int] = set()
    tiles = []
    for i in indices:
        image, mask = dataset.load(i)
        mask = np.asarray(mask)
        present.update(np.unique(mask).tolist())
        tiles.append((i, overlay(image, mask, palette, alpha, ignore_index=ignore)))

    handles = [
        Patch(facecolor=palette[c] / 255.0, edgecolor="black", label=classes[c])
        for c in sorted(present)
        if c < len(classes)
    ]
    if ignore in present:
        handles.append(
            Patch(facecolor=np.array(IGNORE_COLOR) / 255.0, edgecolor="black", label="ignore")
        )
    legend_cols = max(1, min(len(handles), int(cols * tile_inches / 1.6)))
    legend_rows = -(-len(handles) // legend_cols)
    legend_h = 0.3 * legend_rows + 0.3
    # rows as tall as the typical image at the tile width, plus a title line
    aspect = float(np.clip(np.median([t.shape[0] / t.shape[1] for _, t in tiles]), 0.5, 2.0))
    title_h = 0.25
    row_h = tile_inches * aspect + title_h
    fig_w, fig_h = cols * tile_inches, rows * row_h + legend_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    pad = 0.03  # inches around each image
    for k, (i, tile) in enumerate(tiles):
        r, c = divmod(k, cols)
        left = c * tile_inches + pad
        bottom = legend_h + (rows - 1 - r) * row_h + pad
        ax = fig.add_axes(
            (
                left / fig_w,
                bottom / fig_h,
                (tile_inches - 2 * pad) / fig_w,
                (row_h - title_h - 2 * pad) / fig_h,
            )
        )
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(f"#{i}  {tile.shape[1]}x{tile.shape[0]}", fontsize=8, pad=2)
        ax.set_axis_off()
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=legend_cols,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
