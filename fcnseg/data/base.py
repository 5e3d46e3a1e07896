"""Shared dataset base class, image/mask decoding and label remapping.

Every dataset returns raw pairs `(image uint8 (H, W, 3) RGB, mask uint8 (H, W))` from
`load(i)`, mask values being class indices with 255 = ignore. Decoding problems are raised
as `DataError`s that name the file and the fix, and carry `.path`, `.kind` and `.hint`
attributes so the checker (`fcnseg.data.check`) can turn them into `Problem`s.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# the Pillow plugins a file may be decoded with, whatever its name: the raster formats above.
# The others are never tried (EPS hands the file to Ghostscript, a program of its own).
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM")
BAD_FILE_HINT = (
    "re-download or re-export the file, or leave the pair out "
    "(`fcnseg data check` lists every bad file; training can skip the listed files)"
)

Transform = Callable[[np.ndarray, np.ndarray], Any]


def default_root(name: str) -> Path:
    """Where a dataset lives when no root is given: `$FCNSEG_DATA/<name>`
    (default `~/.cache/fcnseg/data/<name>`)."""
    base = os.environ.get("FCNSEG_DATA") or "~/.cache/fcnseg/data"
    return Path(base).expanduser() / name


def data_error(
    message: str, path: str | os.PathLike | None = None, kind: str = "unreadable", hint: str = ""
) -> DataError:
    """A DataError whose text is `message; fix: hint`, with machine-readable attributes."""
    err = DataError(f"{message}; fix: {hint}" if hint else message)
    err.path = Path(path) if path is not None else None  # type: ignore[attr-defined]
    err.kind = kind  # type: ignore[attr-defined]
    err.hint = hint  # type: ignore[attr-defined]
    err.detail = message  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------- decoding


@contextlib.contextmanager
def _decoding(path: Path, what: str):
    """Turn PIL's decoding exceptions into DataErrors naming `path`."""
    try:
        yield
    except FileNotFoundError:
        raise data_error(
            f"{path}: {what} file not found", path, f"missing-{what}", BAD_FILE_HINT
        ) from None
    except UnidentifiedImageError as e:
        raise data_error(
            f"{path}: cannot decode {what} ({e}; fcnseg reads PNG, JPEG, BMP, TIFF, WebP and PPM only)",
            path, "unreadable", BAD_FILE_HINT,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        text = str(e) or type(e).__name__
        kind = "truncated" if "truncat" in text.lower() or isinstance(e, EOFError) else "unreadable"
        raise data_error(
            f"{path}: cannot decode {what} ({text})", path, kind, BAD_FILE_HINT
        ) from None


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode `path` (so truncated files fail here), EXIF orientation applied.

    `what` ("image" or "mask") only words the error. Raises DataError (kind "missing-<what>",
    "truncated" or "unreadable")."""
    path = Path(path)
    with _decoding(path, what):
        im = Image.open(path, formats=RASTER_FORMATS)
        im.load()
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # a broken EXIF block must not hide usable pixels
        pass
    return im


def _oriented(size: tuple[int, int], exif: Image.Exif) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from PIL's (W, H)."""
    w, h = size
    return (w, h) if exif.get(0x0112) in (5, 6, 7, 8) else (h, w)


def probe_image(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """Check that an image file is intact and return its (H, W) after EXIF orientation,
    faster than decoding: PNGs are verified chunk by chunk (CRCs, so truncation and
    corruption are caught), JPEGs are entropy-decoded at 1/8 scale (truncation is caught);
    other formats are fully decoded. Raises DataError like `open_image`."""
    path = Path(path)
    with _decoding(path, what):
        im = Image.open(path, formats=RASTER_FORMATS)
        if im.format == "PNG":
            exif = Image.Exif()
            if "exif" in im.info:
                with contextlib.suppress(Exception):
                    exif.load(im.info["exif"])
            hw = _oriented(im.size, exif)
            im.verify()
            return hw
        if im.format == "JPEG":
            exif = im.getexif()
            hw = _oriented(im.size, exif)
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return hw
    im = open_image(path, what)
    return im.height, im.width


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 (H, W, 3) RGB. Grayscale, palette, RGBA (alpha dropped), CMYK,
    YCbCr, 16-bit (scaled from the full 0..65535 range) and float images are converted."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        a = np.asarray(im)
        if im.mode == "F":
            a = a * 255.0 if float(a.max(initial=0)) <= 1.0 else a
            g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            g = np.clip((a.astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def mask_to_array(im: Image.Image, color: bool = False) -> np.ndarray:
    """A mask image -> its raw values: (H, W) integers (palette PNGs give their indices,
    16-bit PNGs uint16), or (H, W, 3) uint8 RGB when `color` is True (colour-coded masks)."""
    if color:
        return image_to_rgb(im)
    mode = im.mode
    if mode in ("P", "L"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in _SIXTEEN_BIT:
        return np.asarray(im)
    if mode in ("LA", "PA"):
        return np.asarray(im)[:, :, 0]
    rgb = image_to_rgb(im)
    if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all():
        return np.ascontiguousarray(rgb[:, :, 0])
    return rgb


class LabelMap:
    """Maps raw mask values (or RGB colours) to class indices, 255 = ignore.

    `values`: raw value -> class index (or 255); `colors`: (r, g, b) -> class index.
    Unlisted values raise a DataError naming the file and the values (`unmapped="error"`),
    or become 255 (`unmapped="ignore"`)."""

    def __init__(
        self,
        values: Mapping[int, int] | None = None,
        colors: Mapping[tuple[int, int, int], int] | None = None,
        unmapped: str = "error",
        hint: str = "",
    ) -> None:
        if unmapped not in ("error", "ignore"):
            raise ConfigError(f"unmapped={unmapped!r}: use 'error' or 'ignore'")
        self.values = dict(values or {})
        self.colors = {tuple(int(c) for c in k): v for k, v in (colors or {}).items()}
        self.unmapped = unmapped
        self.hint = hint or "fix the mask, or map the values in the dataset's classes"
        self._lut8 = self._lut(256)
        self._lut16: np.ndarray | None = None
        # uint8 fast path: cv2.LUT, and a min/max test when the valid values are one range
        self._lut8_u8 = np.where(self._lut8 < 0, 0, self._lut8).astype(np.uint8)
        self._invalid8 = (self._lut8 < 0).astype(np.uint8)
        valid = np.flatnonzero(self._lut8 >= 0)
        lo, hi = (int(valid[0]), int(valid[-1])) if valid.size else (1, 0)
        self._dense8 = (lo, hi) if valid.size and self._invalid8[lo : hi + 1].sum() == 0 else None
        if self.colors:
            keys = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colors], np.int64)
            order = np.argsort(keys)
            self._ckeys = keys[order]
            self._cvals = np.array(list(self.colors.values()), np.int16)[order]

    @property
    def uses_colors(self) -> bool:
        return bool(self.colors)

    def _lut(self, n: int) -> np.ndarray:
        fill = -1 if self.unmapped == "error" else IGNORE_INDEX
        lut = np.full(n, fill, np.int16)
        for v, c in self.values.items():
            if 0 <= v < n:
                lut[v] = c
        return lut

    def __call__(self, raw: np.ndarray, path: str | os.PathLike = "<mask>") -> np.ndarray:
        """raw (H, W) ints or (H, W, 3) uint8 -> uint8 (H, W) class indices / 255."""
        if raw.ndim == 3:
            if not self.colors:
                raise data_error(
                    f"{path}: mask is a colour image but the classes map values, not colours",
                    path,
                    "bad-values",
                    "save the mask as single-channel class values, or give each class a "
                    "`color` in the classes file",
                )
            r = raw.astype(np.int64)
            key = (r[:, :, 0] << 16) | (r[:, :, 1] << 8) | r[:, :, 2]
            idx = np.clip(np.searchsorted(self._ckeys, key), 0, len(self._ckeys) - 1)
            hit = self._ckeys[idx] == key
            fill = -1 if self.unmapped == "error" else IGNORE_INDEX
            out = np.where(hit, self._cvals[idx], np.int16(fill))
            bad = out < 0
            if bad.any():
                cols = np.unique(key[bad])[:8]
                shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in cols)
                raise data_error(
                    f"{path}: mask colours outside the classes: {shown}",
                    path,
                    "bad-values",
                    self.hint,
                )
            return out.astype(np.uint8)
        if raw.dtype == np.uint8 and raw.ndim == 2:
            raw = np.ascontiguousarray(raw)
            out8 = cv2.LUT(raw, self._lut8_u8)
            if not self._invalid8.any():
                return out8
            if self._dense8 is not None:
                lo, hi = self._dense8
                if raw.size == 0 or (int(raw.min()) >= lo and int(raw.max()) <= hi):
                    return out8
            if not cv2.LUT(raw, self._invalid8).any():
                return out8
            out = self._lut8[raw]
        elif raw.size and int(raw.min()) >= 0 and int(raw.max()) < 65536:
            if self._lut16 is None:
                self._lut16 = self._lut(65536)
            out = self._lut16[raw.astype(np.int64, copy=False)]
        else:
            out = np.full(raw.shape, -1, np.int16)
            for v, c in self.values.items():
                out[raw == v] = c
            if self.unmapped == "ignore":
                out[out < 0] = IGNORE_INDEX
        bad = out < 0
        if bad.any():
            vals = np.unique(raw[bad])
            shown = ", ".join(str(int(v)) for v in vals[:12]) + (" ..." if len(vals) > 12 else "")
            raise data_error(
                f"{path}: mask values outside the classes: {shown}", path, "bad-values", self.hint
            )
        return out.astype(np.uint8)


# --------------------------------------------------------------------------- datasets


def resolve_root(root: str | os.PathLike | None, name: str, hint: str) -> Path:
    """`root` (or the default root) as a Path; DataError if it is missing or empty."""
    path = Path(root).expanduser() if root is not None else default_root(name)
    if not path.exists():
        raise data_error(f"{name}: dataset root {path} does not exist", path, "missing-root", hint)
    if not path.is_dir():
        raise data_error(f"{name}: dataset root {path} is not a folder", path, "missing-root", hint)
    if not any(path.iterdir()):
        raise data_error(f"{name}: dataset root {path} is empty", path, "empty-root", hint)
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def read_list(path: Path, hint: str) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise data_error(f"split list {path} not found", path, "missing-split", hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise data_error(f"cannot read split list {path} ({e})", path, "unreadable", hint) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def as_number(value: Any, kind: type, name: str) -> Any:
    """`kind(value)` for an option, or a ConfigError naming the option."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected a number")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected {kind.__name__}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise ConfigError(f"{name}={value!r}: expected an integer")
    return out


def seeded_carve(names: Sequence, val_fraction: float, seed: int) -> tuple[list, list]:
    """Split sorted `names` into (train, val) deterministically: val is a seeded random
    `val_fraction` of the items (at least one when there are two or more)."""
    val_fraction = as_number(val_fraction, float, "val_fraction")
    seed = as_number(seed, int, "seed")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction}: must be in [0, 1)")
    names = sorted(names)
    n_val = int(round(val_fraction * len(names)))
    if val_fraction > 0 and len(names) >= 2:
        n_val = max(1, n_val)
    perm = np.random.default_rng(seed).permutation(len(names))
    val_idx = set(perm[:n_val].tolist())
    train = [n for i, n in enumerate(names) if i not in val_idx]
    val = [n for i, n in enumerate(names) if i in val_idx]
    return train, val


def make_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map for `n` classes: uint8 (n, 3)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


class SegmentationDataset(torch.utils.data.Dataset):
    """Base for all datasets: holds the class metadata, `samples` (image path, mask path)
    for file-backed datasets, and implements `load`, `__getitem__`, `exclude`.

    Subclasses set `name`, `classes`, `palette`, `splits`, `download_hint`, fill
    `self.samples` (complete pairs) and `self.unpaired` ((path, "missing-mask" |
    "missing-image") for files whose partner is absent), and set `self.label_map`."""

    name: str = ""
    splits: tuple[str, ...] = ()
    # splits that together cover the data on disk once (what `check_dataset` scans)
    check_splits: tuple[str, ...] = ()
    download_hint: str = ""
    ignore_index: int = IGNORE_INDEX

    def __init__(self, split: str, transforms: Transform | None = None) -> None:
        if split not in self.splits:
            raise ConfigError(
                f"dataset {self.name!r} has no split {split!r}; choose one of "
                f"{', '.join(self.splits)}"
            )
        self.split = split
        self.transforms = transforms
        self.classes: tuple[str, ...] = ()
        self.palette: np.ndarray = np.zeros((0, 3), np.uint8)
        self.samples: list[tuple[Path, Path]] = []
        self.unpaired: list[tuple[Path, str]] = []
        self.label_map = LabelMap()
        self.root: Path | None = None
        self._decoded: list[tuple[np.ndarray, np.ndarray]] | None = None  # see `preload`

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, root={self.root}, "
            f"len={len(self)}, num_classes={self.num_classes})"
        )

    # -- decoding, overridable per layout
    def read_image(self, path: Path) -> np.ndarray:
        """uint8 (H, W, 3) RGB."""
        return image_to_rgb(open_image(path, "image"))

    def read_mask_raw(self, path: Path) -> np.ndarray:
        """The mask's stored values before remapping."""
        return mask_to_array(open_image(path, "mask"), color=self.label_map.uses_colors)

    def read_mask(self, path: Path) -> np.ndarray:
        """uint8 (H, W) class indices, 255 = ignore."""
        return self.label_map(self.read_mask_raw(path), path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: image uint8 (H, W, 3) RGB, mask uint8 (H, W); from memory (read-only
        arrays) once `preload` has run, else decoded by `read_pair`."""
        if self._decoded is not None:
            return self._decoded[index]
        return self.read_pair(index)

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode pair `index` from its files (datasets without files override this)."""
        image_path, mask_path = self.samples[index]
        image = self.read_image(image_path)
        mask = self.read_mask(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise data_error(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} "
                f"is {image.shape[1]}x{image.shape[0]}",
                mask_path,
                "size-mismatch",
                "re-export the mask at the image's size, or leave the pair out",
            )
        return image, mask

    def preload(self) -> int:
        """Decode every pair once and keep it in memory; `load` then reads from there.
        Returns the bytes held (CamVid train: 367 pairs, 242 MiB).

        For small datasets read for many epochs on few cores, where decoding each PNG again
        every epoch takes CPU time from the model. DataLoader workers forked afterwards share
        the arrays copy-on-write; they are marked read-only so no transform can alter them."""
        decoded = [self.read_pair(index) for index in range(len(self))]
        for image, mask in decoded:
            image.flags.writeable = False
            mask.flags.writeable = False
        self._decoded = decoded
        return sum(image.nbytes + mask.nbytes for image, mask in decoded)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask

    def exclude(self, paths: Iterable[str | os.PathLike]) -> int:
        """Drop samples whose image or mask is among `paths` (e.g. `Problem.path`s from the
        checker). Returns how many samples were dropped."""
        bad = {os.path.abspath(p) for p in paths}
        keep = [
            s
            for s in self.samples
            if os.path.abspath(s[0]) not in bad and os.path.abspath(s[1]) not in bad
        ]
        dropped = len(self.samples) - len(keep)
        if self._decoded is not None:
            kept = set(keep)
            self._decoded = [d for s, d in zip(self.samples, self._decoded, strict=True) if s in kept]
        self.samples = keep
        return dropped

    def _finish(self, pairs: Iterable[tuple[Path, Path]], where: Path) -> None:
        """Keep the complete pairs in `samples`, record the rest in `unpaired`."""
        for img, msk in pairs:
            img_ok, msk_ok = img.is_file(), msk.is_file()
            if img_ok and msk_ok:
                self.samples.append((img, msk))
            elif img_ok:
                self.unpaired.append((msk, "missing-mask"))
            elif msk_ok:
                self.unpaired.append((img, "missing-image"))
            else:
                self.unpaired.append((img, "missing-image"))
        self._warn_and_require(where)

    def _warn_and_require(self, where: Path) -> None:
        if self.unpaired:
            log.warning(
                "%s/%s: %d listed files are missing (first: %s); those pairs are left out — "
                "run `fcnseg data check --data %s --data-root %s` for the list",
                self.name,
                self.split,
                len(self.unpaired),
                self.unpaired[0][0],
                self.name,
                self.root,
            )
        if not self.samples:
            missing = f" ({len(self.unpaired)} listed files missing)" if self.unpaired else ""
            err = data_error(
                f"{self.name}: no image/mask pairs for split {self.split!r} under {where}{missing}",
                where,
                "empty-split",
                self.download_hint,
            )
            err.unpaired = list(self.unpaired)  # type: ignore[attr-defined]
            raise err
