"""The fingerprint of a dataset: what the planner needs to know about its images and masks.

``fingerprint(data, root, options)`` scans the training split once through the dataset's own
loader (``fcnseg.data.build_dataset``; a folder's classes file and value mapping apply) and the
label statistics of ``fcnseg.data.stats.dataset_stats`` (one decoding pass; of a split larger
than MAX_SCAN_IMAGES, that many images spread evenly), and adds what they lack: object sizes
per class (connected components, 8-connectivity), how thin each class is (the share of its
pixels a 3x3 erosion removes: 1.0 for 1-2 px lines), mask values the classes file does not
map, the channel mean/std, and whether the class layout has an up (``layout``: how far each
class's share over horizontal bands of the image differs from the same bands upside down and
from its share over vertical bands; ~0 for microscopy or aerial images, large for street
scenes). The result is a JSON-ready dict, cached by the list of files and their mtimes:
beside the data (``ROOT/.fcnseg/``) or, where that folder is read-only, in the fcnseg cache
directory (``$FCNSEG_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("fcnseg.plan")

VERSION = 4  # bump when the fingerprint's content changes: old caches are then ignored
# images whose pixels are read (spread evenly over the split; every file is in the cache key):
# the scan of a large dataset stays within a few per cent of a 10-minute budget
MAX_SCAN_IMAGES = 400
# of those, images whose connected components are measured (spread evenly)
MAX_COMPONENT_IMAGES = 200
# the class layout is read in this many horizontal and vertical bands of each image
BANDS = 8


def cache_dir() -> Path:
    from fcnseg.inference.backends import cache_dir as fcnseg_cache

    return fcnseg_cache()


def _key(data: str, options: dict, split: str, samples: list) -> str:
    h = hashlib.sha1(f"v{VERSION}|{data}|{split}|{json.dumps(options, sort_keys=True, default=str)}".encode())
    for pair in samples:
        for path in pair:
            try:
                st = os.stat(path)
                h.update(f"{path}|{st.st_mtime_ns}|{st.st_size}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
    return h.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    """Writable by us and not marked read-only (root may write where the mode says no)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def _cache_paths(root: str | os.PathLike | None, key: str) -> list[Path]:
    paths = []
    if root is not None and Path(root).is_dir() and _writable(Path(root)):
        paths.append(Path(root) / ".fcnseg" / f"fingerprint-{key}.json")
    paths.append(cache_dir() / "fingerprints" / f"fingerprint-{key}.json")
    return paths


def _write_cache(paths: list[Path], fp: dict) -> Path | None:
    """Beside the data first; the cache directory where the data folder is read-only."""
    text = json.dumps(fp, indent=1)
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    return None


def fingerprint(
    data: str,
    root: str | os.PathLike | None = None,
    options: dict | None = None,
    *,
    split: str = "train",
    val_split: str = "val",
    cache: bool = True,
) -> dict:
    """The fingerprint of ``data``'s ``split`` (a dict; see the module docstring), from the
    cache when the files are unchanged. ``fingerprint["cache"]`` says where it was read from or
    written to and ``fingerprint["seconds"]`` how long the scan took."""
    from fcnseg.data import build_dataset, dataset_options

    options = dict(options or {})
    scan_options = dict(options)
    if "unmapped" in dataset_options(data):  # count unmapped values instead of stopping at the first
        scan_options["unmapped"] = "ignore"
    ds = build_dataset(data, root=root, split=split, **scan_options)
    key = _key(data, options, split, ds.samples)
    paths = _cache_paths(getattr(ds, "root", root), key)
    if cache:
        for path in paths:
            if path.is_file():
                try:
                    fp = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if fp.get("version") == VERSION:
                    fp["cache"] = {"hit": True, "path": str(path)}
                    return fp
    t0 = time.perf_counter()
    fp = _scan(ds, data, root, options, split, val_split)
    fp["seconds"] = time.perf_counter() - t0
    fp["key"] = key
    written = _write_cache(paths, fp) if cache else None
    fp["cache"] = {"hit": False, "path": str(written) if written else None}
    return fp


def _val_info(data: str, root, options: dict, val_split: str, train_ds) -> dict:
    """Whether the data has a validation split of its own, or a seeded carve of the files
    (a folder without val/ subfolders; Pet's train/val), or none."""
    from fcnseg.data import build_dataset
    from fcnseg.errors import FcnsegError

    carved = False
    img_root = getattr(train_ds, "root", None)
    if data == "folder":
        images = Path(options.get("images") or (Path(img_root) / "images"))
        carved = not (images / "val").is_dir()
    elif data == "oxford-pet":  # train/val carved from trainval
        carved = True
    try:
        val = build_dataset(data, root=root, split=val_split, **options)
        n = len(val)
    except FcnsegError:
        n = 0
    return {"split": val_split, "images": n, "carved": carved and n > 0, "exists": n > 0}


def _thin_share(mask: np.ndarray, c: int) -> tuple[int, int]:
    """(pixels of class c, of them those a 3x3 erosion removes), the image border not counting as edge."""
    import cv2

    m = (mask == c).astype(np.uint8)
    n = int(m.sum())
    if not n:
        return 0, 0
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return n, n - int(eroded.sum())


def _weighted_median(values, weights) -> float:
    """The value that half of the total weight lies at or below (0 for none): with the objects'
    areas as weights, the object size that half of a class's pixels lie in."""
    if not len(values):
        return 0.0
    order = np.argsort(values)
    v, w = np.asarray(values, np.float64)[order], np.asarray(weights, np.float64)[order]
    return float(v[np.searchsorted(np.cumsum(w), w.sum() / 2)])


def _add_bands(mask: np.ndarray, k: int, rows: np.ndarray, cols: np.ndarray) -> None:
    """Adds the image's class shares per horizontal and vertical band (each image weighs the same)."""
    h, w = mask.shape[:2]
    y = [-(-b * h // BANDS) for b in range(BANDS + 1)]  # row r is in band r * BANDS // h
    x = [-(-b * w // BANDS) for b in range(BANDS + 1)]
    for b in range(BANDS):
        rows[:, b] += np.bincount(mask[y[b]:y[b + 1]].ravel(), minlength=k)[:k] / float(h * w)
        cols[:, b] += np.bincount(mask[:, x[b]:x[b + 1]].ravel(), minlength=k)[:k] / float(h * w)


def _layout(rows: np.ndarray, cols: np.ndarray, freq: np.ndarray) -> dict:
    """How much the class layout depends on the image's orientation, 0 (none) .. 1, as the
    pixel-share-weighted mean over classes of half the L1 distance between a class's profile
    over the horizontal bands and the same upside down (``upside_down``), mirrored left-right
    (``mirrored``) or its profile over the vertical bands (``turned``)."""
    def profile(a):
        return a / np.maximum(a.sum(1, keepdims=True), 1e-12)

    v, hz = profile(rows), profile(cols)
    wts = freq / max(freq.sum(), 1e-12)

    def dist(a, b) -> float:
        return float((wts * 0.5 * np.abs(a - b).sum(1)).sum())

    return {"upside_down": dist(v, v[:, ::-1]), "mirrored": dist(hz, hz[:, ::-1]), "turned": dist(v, hz), "bands": BANDS}


def _scan(ds, data: str, root, options: dict, split: str, val_split: str) -> dict:
    import cv2

    from fcnseg.data.stats import _indices, dataset_stats

    k = int(ds.num_classes)
    scanned = _indices(len(ds), MAX_SCAN_IMAGES)
    component_images = {scanned[j] for j in _indices(len(scanned), MAX_COMPONENT_IMAGES)}
    areas: list[list[float]] = [[] for _ in range(k)]  # component areas, as fractions of their image
    widths: list[list[float]] = [[] for _ in range(k)]  # component bounding-box short sides, px
    edge = np.zeros(k, np.int64)
    pixels = np.zeros(k, np.int64)
    csum = np.zeros(3)
    csq = np.zeros(3)
    npx = 0
    gray = True
    sizes = []
    rows = np.zeros((k, BANDS))  # class pixel shares per horizontal band (top to bottom), summed over images
    cols = np.zeros((k, BANDS))  # ... per vertical band (left to right)
    unmapped: dict[int, int] = {}
    label_map = getattr(ds, "label_map", None)
    check_raw = label_map is not None and not label_map.uses_colors and hasattr(ds, "read_mask_raw")
    levels = np.arange(256, dtype=np.float64) / 255.0

    def visit(i: int, image: np.ndarray, mask: np.ndarray) -> None:
        nonlocal npx, gray, csum, csq
        sizes.append(list(mask.shape[:2]))
        flat = image.reshape(-1, image.shape[-1])
        if image.dtype == np.uint8:  # a histogram a channel: exact sums without a float copy of the image
            for ch in range(3):
                hist = np.bincount(flat[:, ch], minlength=256)
                csum[ch] += hist @ levels
                csq[ch] += hist @ levels**2
        else:
            px = flat.astype(np.float64) / 255.0
            csum += px.sum(0)
            csq += (px**2).sum(0)
        npx += flat.shape[0]
        if gray and not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            gray = False
        if check_raw:
            raw = np.asarray(ds.read_mask_raw(ds.samples[i][1]))
            if raw.dtype in (np.uint8, np.uint16):  # a count per value, without np.unique's sort
                counts = np.bincount(raw.ravel())
                values = np.flatnonzero(counts)
                counts = counts[values]
            else:
                values, counts = np.unique(raw, return_counts=True)
            for v, n in zip(values.tolist(), counts.tolist(), strict=True):
                if int(v) not in label_map.values:
                    unmapped[int(v)] = unmapped.get(int(v), 0) + int(n)
        if i not in component_images:
            return
        area = float(mask.shape[0] * mask.shape[1])
        _add_bands(mask, k, rows, cols)
        for c in np.flatnonzero(np.bincount(mask.ravel(), minlength=k)[:k]).tolist():
            n, e = _thin_share(mask, c)
            pixels[c] += n
            edge[c] += e
            count, _, cstats, _ = cv2.connectedComponentsWithStats((mask == c).astype(np.uint8), connectivity=8)
            for j in range(1, count):
                areas[c].append(cstats[j, cv2.CC_STAT_AREA] / area)
                widths[c].append(float(min(cstats[j, cv2.CC_STAT_WIDTH], cstats[j, cv2.CC_STAT_HEIGHT])))

    stats = dataset_stats(ds, max_images=MAX_SCAN_IMAGES, visit=visit)
    mean = csum / max(npx, 1)
    std = np.sqrt(np.maximum(csq / max(npx, 1) - mean**2, 0.0))
    hs = np.array([s[0] for s in sizes])
    ws = np.array([s[1] for s in sizes])
    per_class = []
    for c in range(k):
        a = np.array(areas[c]) if areas[c] else np.zeros(0)
        per_class.append({
            "name": stats["classes"][c],
            "frequency": stats["frequencies"][c],
            "presence": stats["image_counts"][c] / max(stats["num_images"], 1),
            "median_frequency_weight": stats["median_frequency_weights"][c],
            "components_per_image": len(a) / max(len(component_images), 1),
            "median_component_area": float(np.median(a)) if a.size else 0.0,
            "p10_component_area": float(np.percentile(a, 10)) if a.size else 0.0,
            # the object size that half of the class's pixels lie in (a network of membranes is
            # one large object even where many small bits sit at the image border)
            "pixel_median_component_area": _weighted_median(a, a),
            "edge_share": float(edge[c] / pixels[c]) if pixels[c] else 0.0,
            # the short side (px, at the image's size) of the objects half of the class's pixels lie in
            "pixel_median_short_side": _weighted_median(widths[c], areas[c]),
        })
    return {
        "version": VERSION,
        "data": data,
        "root": str(root) if root is not None else None,
        "options": options,
        "split": split,
        "num_images": len(ds),
        "scanned_images": len(scanned),
        "num_classes": k,
        "classes": stats["classes"],
        "ignore_index": stats["ignore_index"],
        "ignored_share": stats["ignored_pixels"] / max(stats["ignored_pixels"] + stats["labelled_pixels"], 1),
        "image_sizes": {
            **stats["image_sizes"],
            "median": [int(np.median(hs)), int(np.median(ws))],
            "min_side": int(min(hs.min(), ws.min())),
        },
        "per_class": per_class,
        "unmapped_values": {str(v): n for v, n in sorted(unmapped.items())},
        "channels": {"mean": mean.tolist(), "std": std.tolist(), "grayscale": gray},
        "layout": _layout(rows, cols, np.array([pc["frequency"] for pc in per_class])),
        "val": _val_info(data, root, options, val_split, ds),
    }


def format_fingerprint(fp: dict) -> str:
    """A few plain lines: images, sizes, and per class its pixel share, presence, object size."""
    s = fp["image_sizes"]
    val = fp["val"]
    n, scanned = fp["num_images"], fp.get("scanned_images", fp["num_images"])
    where = "cached" if fp.get("cache", {}).get("hit") else f"scanned in {fp.get('seconds', 0):.1f}s"
    if scanned < n:
        where = f"{scanned} of them read, spread evenly; {where}"
    lines = [
        f"{fp['data']}/{fp['split']}: {fp['num_images']} images ({where}), median {s['median'][1]}x{s['median'][0]} "
        f"(W x H), {s['distinct']} distinct sizes, smallest side {s['min_side']} px"
        + ("; grayscale" if fp["channels"]["grayscale"] else ""),
        "layout (0: none, 1: fixed): upside down {upside_down:.2f}, mirrored {mirrored:.2f}, turned {turned:.2f}".format(**fp["layout"])
        if fp.get("layout") else "layout: not measured",
        (f"validation: no split of its own; a seeded carve of the files ({val['images']} at the data's current fraction; the plan sizes it)"
         if val["carved"] else f"validation: {val['images']} image{'s' if val['images'] != 1 else ''} in {val['split']!r}")
        if val["exists"] else "validation: no split",
    ]
    if fp["unmapped_values"]:
        lines.append("mask values not in the classes: " + ", ".join(f"{v} ({n} px)" for v, n in fp["unmapped_values"].items()))
    width = max(5, *(len(c["name"]) for c in fp["per_class"]))
    lines.append(f"{'class':<{width}}  pixels %  images %  objects/img  object % (px-median)  edge share")
    for c in fp["per_class"]:
        lines.append(
            f"{c['name']:<{width}}  {100 * c['frequency']:8.2f}  {100 * c['presence']:8.0f}  {c['components_per_image']:11.1f}  "
            f"{100 * c['pixel_median_component_area']:20.3f}  {c['edge_share']:10.2f}"
        )
    return "\n".join(lines)
