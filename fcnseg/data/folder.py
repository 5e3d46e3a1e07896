"""Any folder of images and masks, paired by file stem, with a classes file.

    ROOT/images/*.{jpg,png,tif,...}      (or images=DIR)
    ROOT/masks/*.png                     (or masks=DIR); same stems as the images
    ROOT/classes.yaml | classes.json     (or classes=PATH, or an inline list/dict)

If images/ and masks/ hold `train/`, `val/` (and `test/`) subfolders, those are the splits;
otherwise `train` / `val` are a seeded carve (`val_fraction`, `seed`) and `all` is every
pair. A mask named `STEM_mask`, `STEM_label`, `STEM_gt` or `STEM_labels` also pairs with
image STEM.

The classes file lists each class with a mask `value` (one int or a list) or an RGB
`color` (colour-coded masks); optional `ignore` lists values/colours to read as 255:

    classes:
      - {name: membrane, value: 0}
      - {name: cell, value: 255}        # 255 may be a real class: only `ignore` means ignore
    ignore: []

A plain mapping works too: `{membrane: 0, cell: 255}` or `{sky: [0, 0, 255], ...}`.
Mask values not in the file raise a DataError naming the file (`unmapped="error"`) or
become 255 (`unmapped="ignore"`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fcnseg.data import register_dataset
from fcnseg.data.base import (
    IGNORE_INDEX,
    LabelMap,
    SegmentationDataset,
    data_error,
    list_images,
    make_palette,
    resolve_root,
    seeded_carve,
)
from fcnseg.errors import ConfigError

MASK_SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_gt", "_annotation")
CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json")
CLASSES_HELP = (
    "write a classes file, e.g. classes.yaml with `classes: [{name: cat, value: 1}, ...]` "
    "(or `color: [r, g, b]` for colour masks), and pass classes=PATH or put it in the root"
)


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        rgb = tuple(int(v) for v in value)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise ConfigError(f"{where}: colour {value!r} is not [r, g, b] (0..255) or '#rrggbb'")


def _values(value: Any, where: str) -> list[int]:
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        out = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: value {value!r} is not an integer (or list of them)") from None
    if any(v < 0 for v in out):
        raise ConfigError(f"{where}: negative mask value in {value!r}")
    return out


def load_classes_spec(spec: Any, where: str = "classes") -> Any:
    """Read a classes file (YAML or JSON) when `spec` is a path; return the parsed object."""
    if isinstance(spec, str | os.PathLike):
        path = Path(spec).expanduser()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"classes file {path} not found; {CLASSES_HELP}") from None
        try:
            if path.suffix.lower() == ".json":
                return json.loads(text)
            import yaml

            return yaml.safe_load(text)
        except Exception as e:
            raise ConfigError(f"classes file {path} cannot be parsed ({e})") from None
    return spec


def parse_classes(spec: Any, where: str = "classes") -> tuple[tuple[str, ...], np.ndarray, dict]:
    """Parsed classes spec -> (names, palette (K, 3) uint8, LabelMap kwargs)."""
    ignore: list = []
    if isinstance(spec, Mapping) and "classes" in spec:
        ignore = list(spec.get("ignore") or [])
        spec = spec["classes"]
    if isinstance(spec, Mapping):  # {name: value} or {name: [r, g, b] | "#rrggbb"}
        key = "color" if spec_is_color(spec) else "value"
        spec = [{"name": name, key: v} for name, v in spec.items()]
    if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
        raise ConfigError(f"{where}: expected a list of classes; {CLASSES_HELP}")
    names, colors_pal = [], []
    values: dict[int, int] = {}
    colors: dict[tuple[int, int, int], int] = {}
    for k, entry in enumerate(spec):
        if isinstance(entry, str):  # bare names: class k has mask value k
            entry = {"name": entry, "value": k}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(
                f"{where}[{k}]: expected {{name: ..., value|color: ...}}, got {entry!r}"
            )
        here = f"{where}[{k}] ({entry['name']})"
        if ("value" in entry) == ("color" in entry):
            raise ConfigError(f"{here}: give exactly one of `value` and `color`")
        if "value" in entry:
            for v in _values(entry["value"], here):
                if v in values:
                    raise ConfigError(f"{here}: mask value {v} already maps to class {values[v]}")
                values[v] = k
            colors_pal.append(_color(entry["palette"], here) if "palette" in entry else None)
        else:
            c = _color(entry["color"], here)
            if c in colors:
                raise ConfigError(f"{here}: colour {c} already maps to class {colors[c]}")
            colors[c] = k
            colors_pal.append(c)
        names.append(str(entry["name"]))
    if values and colors:
        raise ConfigError(f"{where}: mix of `value` and `color` classes; use one kind")
    if len(names) > 255:
        raise ConfigError(f"{where}: {len(names)} classes; at most 255 (255 is the ignore index)")
    for item in ignore:
        if colors:
            colors[_color(item, f"{where} ignore")] = IGNORE_INDEX
        else:
            for v in _values(item, f"{where} ignore"):
                values[v] = IGNORE_INDEX
    default = make_palette(len(names))
    palette = np.array(
        [c if c is not None else default[i] for i, c in enumerate(colors_pal)], np.uint8
    )
    return tuple(names), palette.reshape(-1, 3), {"values": values, "colors": colors}


def spec_is_color(spec: Mapping) -> bool:
    """A plain mapping is colour-coded when every value is a 3-sequence or '#rrggbb'."""
    return all(
        isinstance(v, str) or (isinstance(v, Sequence) and len(v) == 3) for v in spec.values()
    )


def _pair_masks(images: list[Path], mask_dir: Path) -> tuple[list[tuple[Path, Path]], list]:
    """Pair images with masks by stem; return (pairs incl. missing sides, masks unused)."""
    masks = list_images(mask_dir) if mask_dir.is_dir() else []
    by_stem: dict[str, Path] = {}
    for m in masks:  # prefer .png when one stem has several files
        if m.stem not in by_stem or m.suffix.lower() == ".png":
            by_stem[m.stem] = m
    used: set[Path] = set()
    pairs = []
    for img in images:
        hit = next((by_stem[img.stem + s] for s in MASK_SUFFIXES if img.stem + s in by_stem), None)
        if hit is None:
            pairs.append((img, mask_dir / f"{img.stem}.png"))
        else:
            used.add(hit)
            pairs.append((img, hit))
    image_stems = {i.stem for i in images}
    orphans = [m for m in by_stem.values() if m not in used and m.stem not in image_stems]
    return pairs, orphans


@register_dataset("folder")
class Folder(SegmentationDataset):
    splits = ("train", "val", "test", "all")
    check_splits = ("all",)
    download_hint = "pass --data-root DIR holding images/ and masks/ (or images=DIR masks=DIR)"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transforms=None,
        *,
        images: str | os.PathLike | None = None,
        masks: str | os.PathLike | None = None,
        classes: str | os.PathLike | Sequence | Mapping | None = None,
        unmapped: str = "error",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(split, transforms)
        if root is None and (images is None or masks is None):
            raise ConfigError(
                "dataset 'folder' needs root=DIR (holding images/ and masks/) or both "
                "images=DIR and masks=DIR"
            )
        if root is not None:
            self.root = resolve_root(root, "folder", self.download_hint)
        img_dir = Path(images).expanduser() if images else self.root / "images"
        mask_dir = Path(masks).expanduser() if masks else self.root / "masks"
        if self.root is None:
            self.root = resolve_root(img_dir, "folder", self.download_hint)
        elif not img_dir.is_dir():
            raise data_error(
                f"folder: no images folder {img_dir}", img_dir, "empty-root", self.download_hint
            )
        if classes is None:
            found = [d / f for d in (self.root, img_dir.parent) for f in CLASSES_FILES]
            found = [p for p in found if p.is_file()]
            if not found:
                raise ConfigError(f"folder dataset at {self.root}: no classes file; {CLASSES_HELP}")
            classes = found[0]
        self.classes_source = classes if isinstance(classes, str | os.PathLike) else "inline"
        self.classes, self.palette, maps = parse_classes(
            load_classes_spec(classes), str(self.classes_source)
        )
        self.label_map = LabelMap(
            **maps,
            unmapped=unmapped,
            hint=f"add the value to {self.classes_source} (or unmapped='ignore')",
        )

        subsplits = [s for s in ("train", "val", "test") if (img_dir / s).is_dir()]
        if subsplits:
            wanted = subsplits if split == "all" else [split]
            if split not in subsplits and split != "all":
                raise data_error(
                    f"folder: split {split!r} not found: no folder {img_dir / split}",
                    img_dir / split,
                    "missing-split",
                    f"splits here: {', '.join(subsplits)}, all",
                )
            pairs, orphans = [], []
            for s in wanted:
                p, o = _pair_masks(list_images(img_dir / s), mask_dir / s)
                pairs += p
                orphans += o
        else:
            all_images = list_images(img_dir)
            if split == "test":
                raise data_error(
                    f"folder: split 'test' needs images/test/ and masks/test/ under {self.root}",
                    img_dir / "test",
                    "missing-split",
                    "use split train, val or all",
                )
            pairs, orphans = _pair_masks(all_images, mask_dir)
            if split in ("train", "val"):
                train, val = seeded_carve([p.name for p in all_images], val_fraction, seed)
                keep = set(train if split == "train" else val)
                pairs = [pair for pair in pairs if pair[0].name in keep]
        self.unpaired.extend((m, "missing-image") for m in orphans)
        self._finish(pairs, self.root)
