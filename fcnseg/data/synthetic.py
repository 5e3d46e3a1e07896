"""The built-in default dataset: procedural pet-trimap-style scenes, no files, no licence.

Each image holds one to three foreground shapes (ellipses, blobs, polygons) filled with a
fine 2-D texture, on a cluttered background of smooth colour fields, coarse stripes and
flat or coarsely striped distractor objects. Colours of foreground and background are
drawn from the same distribution, so the classes differ by texture (local frequency), not
by colour identity. Labels follow Oxford-IIIT Pet: pet (0), background (1), and a border
band (2) about `2 * border_width` pixels wide around every foreground outline.

Pairs are a pure function of (seed, split, index): the same index always gives the same
pair, whatever the worker or the order of access.
"""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np

from fcnseg.data import register_dataset
from fcnseg.data.base import IGNORE_INDEX, SegmentationDataset, as_number
from fcnseg.data.pet import PET_CLASSES, PET_PALETTE
from fcnseg.errors import ConfigError

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTH = {"train": 512, "val": 64, "test": 64}


def _grating(xx: np.ndarray, yy: np.ndarray, period: float, theta: float, phase: float):
    """sin of a plane wave at pixel coordinates xx, yy (any matching shapes)."""
    k = 2 * np.pi / period
    return np.sin(xx * np.float32(k * np.cos(theta)) + yy * np.float32(k * np.sin(theta)) + phase)


def _full_grating(h: int, w: int, period: float, theta: float, phase: float) -> np.ndarray:
    """(h, w) plane wave, separably: sin(a x + b y + p) = sin(a x) cos(b y + p) + cos(a x) sin(b y + p)."""
    k = 2 * np.pi / period
    ax = np.arange(w, dtype=np.float32) * np.float32(k * np.cos(theta))
    by = np.arange(h, dtype=np.float32) * np.float32(k * np.sin(theta)) + np.float32(phase)
    return np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))


@functools.lru_cache(maxsize=8)
def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32)


def _contrast_pair(
    rng: np.random.Generator, lo: float = 70, hi: float = 130
) -> tuple[np.ndarray, np.ndarray]:
    """Two colours `lo`..`hi` apart (RGB distance), with a luma difference of at least a
    third of that, so the texture they form is visible."""
    c1 = _color(rng)
    d = rng.normal(size=3).astype(np.float32)
    d += np.sign(d.sum() + 1e-6) * 0.8 * np.abs(d).mean()  # lean towards a luma change
    d *= rng.uniform(lo, hi) / (np.linalg.norm(d) + 1e-6)
    c2 = c1 + d
    # keep c2 inside 0..255 by moving the pair, not clipping it (clipping kills contrast)
    shift = np.clip(c2, 0, 255) - c2
    return np.clip(c1 + shift, 0, 255), np.clip(c2 + shift, 0, 255)


def render(
    rng: np.random.Generator, height: int, width: int, border_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 (H, W, 3), mask uint8 (H, W) in {0 pet, 1 background, 2 border}."""
    h, w = height, width
    s = min(h, w) / 128.0  # texture scales with the image
    yy, xx = _coords(h, w)

    # background: smooth colour field + a faint coarse grating
    grid = rng.uniform(20, 235, (3, 3, 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    coarse = _full_grating(
        h, w, rng.uniform(18, 40) * s, rng.uniform(0, np.pi), rng.uniform(0, 6.3)
    )
    img += coarse[:, :, None] * rng.uniform(-25, 25, 3).astype(np.float32)

    # clutter: flat or coarsely striped rectangles, discs and thick lines
    for _ in range(int(rng.integers(2, 6))):
        layer = np.zeros((h, w), np.uint8)
        kind = int(rng.integers(3))
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        r = int(rng.uniform(0.06, 0.2) * min(h, w)) + 1
        if kind == 0:
            cv2.rectangle(layer, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
        elif kind == 1:
            cv2.circle(layer, (cx, cy), r, 1, -1)
        else:
            x2, y2 = int(rng.integers(w)), int(rng.integers(h))
            cv2.line(layer, (cx, cy), (x2, y2), 1, max(1, int(rng.uniform(2, 6) * s)))
        m = layer.astype(bool)
        c1, c2 = _contrast_pair(rng)
        if rng.random() < 0.5:
            t = _grating(xx[m], yy[m], rng.uniform(14, 28) * s, rng.uniform(0, np.pi), 0.0)
            img[m] = c1 + (c2 - c1) * ((t + 1) / 2)[:, None]
        else:
            img[m] = c1

    # foreground shapes with a fine 2-D texture (periods 4-7 px at 128 px)
    fg = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        rad = rng.uniform(0.14, 0.32) * min(h, w)
        kind = int(rng.integers(3))
        # implicit shapes are evaluated in their bounding box only
        y0, y1 = max(0, int(cy - 1.6 * rad)), min(h, int(cy + 1.6 * rad) + 1)
        x0, x1 = max(0, int(cx - 1.6 * rad)), min(w, int(cx + 1.6 * rad) + 1)
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        if kind == 0:  # rotated ellipse
            a, b = rad, rad * rng.uniform(0.5, 1.0)
            th = rng.uniform(0, np.pi)
            u = dx * np.cos(th) + dy * np.sin(th)
            v = -dx * np.sin(th) + dy * np.cos(th)
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        elif kind == 1:  # blob: radius modulated by a few harmonics
            ang = np.arctan2(dy, dx)
            rr = np.ones_like(ang)
            for k in (2, 3, 5):
                rr += rng.uniform(0, 0.18) * np.cos(k * ang + rng.uniform(0, 6.3))
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = dx * dx + dy * dy <= (rad * rr) ** 2
        else:  # polygon with 5-9 vertices at jittered radii
            n = int(rng.integers(5, 10))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rr = rad * rng.uniform(0.6, 1.1, n)
            pts = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1).round()
            layer = np.zeros((h, w), np.uint8)
            cv2.fillPoly(layer, [pts.astype(np.int32)], 1)
            m = layer.astype(bool)
        # plaid of two fine gratings, squashed towards two levels (crisp, high contrast)
        xm, ym = xx[m], yy[m]
        t = _grating(xm, ym, rng.uniform(4, 7) * s, rng.uniform(0, np.pi), rng.uniform(0, 6.3))
        t += _grating(xm, ym, rng.uniform(4, 7) * s, rng.uniform(0, np.pi), 0.0)
        c1, c2 = _contrast_pair(rng, 100, 160)
        img[m] = c1 + (c2 - c1) * ((np.tanh(1.5 * t) + 1) / 2)[:, None]
        fg |= m

    mask = np.ones((h, w), np.uint8)
    mask[fg] = 0
    if border_width > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * border_width + 1,) * 2)
        fg8 = fg.astype(np.uint8)
        band = cv2.dilate(fg8, k) != cv2.erode(fg8, k)
        mask[band] = 2
    img += rng.normal(0, 3, (h, w, 1)).astype(np.float32)  # sensor noise (luma)
    return np.clip(img, 0, 255).astype(np.uint8), mask


@register_dataset("synthetic")
class Synthetic(SegmentationDataset):
    """Procedural pet/background/border scenes; `root` is ignored (nothing is read)."""

    splits = ("train", "val", "test")
    check_splits = ()

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transforms=None,
        *,
        size: int | tuple[int, int] = (128, 128),
        length: int | None = None,
        seed: int = 0,
        border: str = "class",
        border_width: int | None = None,
    ) -> None:
        super().__init__(split, transforms)
        if isinstance(size, str) and "x" in size.lower():  # "160x200" from a CLI option
            size = size.lower().split("x")
        elif isinstance(size, int | str):
            size = (size, size)
        try:
            self.size = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"synthetic: size={size!r}: give (H, W) or one int") from None
        if min(self.size) < 16:
            raise ConfigError(f"synthetic: size={size!r}: at least 16x16")
        self.length = DEFAULT_LENGTH[split] if length is None else as_number(length, int, "length")
        if self.length < 1:
            raise ConfigError(f"synthetic: length={length!r}: must be >= 1")
        if border not in ("class", "ignore"):
            raise ConfigError(f"synthetic: border={border!r}: use 'class' or 'ignore'")
        self.seed = as_number(seed, int, "seed")
        self.border = border
        self.border_width = (
            max(2, round(min(self.size) / 26))
            if border_width is None
            else as_number(border_width, int, "border_width")
        )
        if border == "class":
            self.classes, self.palette = PET_CLASSES, PET_PALETTE.copy()
        else:
            self.classes, self.palette = PET_CLASSES[:2], PET_PALETTE[:2].copy()

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"Synthetic(split={self.split!r}, size={self.size}, len={self.length}, "
            f"seed={self.seed}, num_classes={self.num_classes})"
        )

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """image uint8 (H, W, 3), mask uint8 (H, W); a pure function of (seed, split, index)."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        index %= self.length
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
        image, mask = render(rng, self.size[0], self.size[1], self.border_width)
        if self.border == "ignore":
            mask[mask == 2] = IGNORE_INDEX
        return image, mask

    def exclude(self, paths) -> int:
        return 0
