"""Label statistics of a dataset and median-frequency class weights.

Median-frequency balancing (Eigen & Fergus 2015, used by SegNet): for class c,
`freq(c) = pixels of c / labelled pixels of the images where c is present`, and
`weight(c) = median(freq) / freq(c)`. Ignored pixels (255) count nowhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from fcnseg.errors import DataError


def _indices(n: int, max_images: int | None) -> list[int]:
    """All indices, or `max_images` spread evenly over the dataset (deterministic)."""
    if max_images is None or max_images >= n:
        return list(range(n))
    if max_images < 1:
        raise DataError(f"max_images must be at least 1, got {max_images}")
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_images)})


def _describe(dataset: Any, i: int) -> str:
    samples = getattr(dataset, "samples", None)
    if samples is not None and i < len(samples):
        return f"sample {i} ({samples[i][1]})"
    return f"sample {i}"


def dataset_stats(dataset: Any, *, max_images: int | None = None, visit: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> dict:
    """Scan the raw masks (`dataset.load(i)`) and return a JSON-ready dict:

    `num_images`, `classes`, `pixel_counts` (per class), `ignored_pixels`,
    `labelled_pixels`, `frequencies` (pixel share per class, ignore excluded),
    `image_counts` (images containing each class), `image_sizes` (`min`/`max` as
    `[H, W]` of the smallest/largest area, `most_common` `[H, W]` and its `count`),
    `median_frequency_weights` (classes never seen get 1.0, the median class's weight).

    `max_images` scans that many images spread evenly over the dataset; `visit(i, image,
    mask)` is called for each scanned pair (after its mask passed the checks), so that other
    statistics share the one decoding pass. Raises DataError for an empty dataset or a mask
    value that is neither a class nor `ignore_index`.
    """
    num_classes = int(dataset.num_classes)
    ignore = int(getattr(dataset, "ignore_index", 255))
    indices = _indices(len(dataset), max_images)
    if not indices:
        raise DataError("the dataset is empty: no images to compute statistics on")

    pixel_counts = np.zeros(num_classes, dtype=np.int64)
    image_counts = np.zeros(num_classes, dtype=np.int64)
    # labelled pixels of the images in which each class is present (median frequency)
    present_pixels = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    sizes: Counter[tuple[int, int]] = Counter()
    for i in indices:
        image, mask = dataset.load(i)
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise DataError(
                f"{_describe(dataset, i)}: mask has shape {mask.shape}, expected (H, W)"
            )
        sizes[(int(mask.shape[0]), int(mask.shape[1]))] += 1
        values = mask.ravel()
        if values.dtype != np.uint8:
            values = values.astype(np.int64)
            bad = values[(values < 0) | (values > 255)]
            if bad.size:
                raise DataError(
                    f"{_describe(dataset, i)}: mask value {int(bad[0])} is not a "
                    f"class (0..{num_classes - 1}) nor ignore ({ignore})"
                )
        counts = np.bincount(values, minlength=256)
        ignored += int(counts[ignore]) if ignore < counts.size else 0
        if ignore < counts.size:
            counts[ignore] = 0
        extra = np.flatnonzero(counts[num_classes:])
        if extra.size:
            raise DataError(
                f"{_describe(dataset, i)}: mask value {num_classes + int(extra[0])} is not a "
                f"class (0..{num_classes - 1}) nor ignore ({ignore}); run `fcnseg data check`"
            )
        counts = counts[:num_classes]
        present = counts > 0
        pixel_counts += counts
        image_counts += present
        present_pixels[present] += int(counts.sum())
        if visit is not None:
            visit(i, np.asarray(image), mask)

    labelled = int(pixel_counts.sum())
    frequencies = pixel_counts / labelled if labelled else np.zeros(num_classes)
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    common, common_n = sizes.most_common(1)[0]
    classes = list(getattr(dataset, "classes", [str(c) for c in range(num_classes)]))
    return {
        "num_images": len(indices),
        "num_classes": num_classes,
        "classes": classes,
        "ignore_index": ignore,
        "pixel_counts": pixel_counts.tolist(),
        "ignored_pixels": ignored,
        "labelled_pixels": labelled,
        "frequencies": frequencies.tolist(),
        "image_counts": image_counts.tolist(),
        "image_sizes": {
            "min": list(by_area[0]),
            "max": list(by_area[-1]),
            "most_common": list(common),
            "count": int(common_n),
            "distinct": len(sizes),
        },
        "median_frequency_weights": _median_frequency(pixel_counts, present_pixels),
    }


def _median_frequency(pixel_counts: np.ndarray, present_pixels: np.ndarray) -> list[float]:
    seen = present_pixels > 0
    if not seen.any():
        return [1.0] * len(pixel_counts)
    freq = pixel_counts[seen] / present_pixels[seen]
    weights = np.ones(len(pixel_counts))
    weights[seen] = np.median(freq) / freq
    return weights.tolist()


def median_frequency_weights(dataset: Any, *, max_images: int | None = None) -> list[float]:
    """Per-class loss weights `(num_classes,)`: `median(freq) / freq(c)`, with
    `freq(c)` = pixels of c / labelled pixels of the images containing c. A class absent
    from every scanned image gets 1.0 (the median class's weight)."""
    return dataset_stats(dataset, max_images=max_images)["median_frequency_weights"]


def format_stats(stats: dict) -> str:
    """A plain-text table: class, pixel %, images containing it, median-frequency weight."""
    sizes = stats["image_sizes"]

    def wxh(hw: list[int]) -> str:
        return f"{hw[1]}x{hw[0]}"

    lines = [
        f"{stats['num_images']} images; sizes (W x H): most common "
        f"{wxh(sizes['most_common'])} ({sizes['count']} images), "
        f"smallest {wxh(sizes['min'])}, largest {wxh(sizes['max'])}",
        f"{stats['labelled_pixels']} labelled pixels, {stats['ignored_pixels']} ignored "
        f"(value {stats['ignore_index']})",
        "",
    ]
    width = max([5] + [len(c) for c in stats["classes"]])
    lines.append(f"{'class':<{width}}  {'pixels %':>8}  {'images':>6}  {'weight':>8}")
    for name, freq, n, w in zip(
        stats["classes"],
        stats["frequencies"],
        stats["image_counts"],
        stats["median_frequency_weights"],
        strict=True,
    ):
        lines.append(f"{name:<{width}}  {100 * freq:8.2f}  {n:6d}  {w:8.4f}")
    return "\n".join(lines)
