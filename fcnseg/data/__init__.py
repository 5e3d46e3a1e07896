"""Datasets by name (plain dict registry). See docs/design.md for the contract.

ds = build_dataset("camvid", root="data/camvid", split="train", transforms=...)
image, mask = ds.load(0)   # uint8 (H, W, 3) RGB, uint8 (H, W) class ids, 255 = ignore
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from fcnseg.errors import ConfigError

DATASETS: dict[str, type] = {}


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_dataset("camvid")` adds the class to `DATASETS`."""

    def deco(cls: type) -> type:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        cls.name = name
        DATASETS[name] = cls
        return cls

    return deco


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_options(name: str) -> list[str]:
    """The keyword options a dataset accepts (besides root, split, transforms)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "root", "split", "transforms")]


def _lookup(name: str) -> type:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    return DATASETS[name]


def build_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: str = "train",
    transforms: Callable | None = None,
    **options,
):
    """Build dataset `name` for `split`. Unknown names/options raise ConfigError; a missing
    or empty root raises DataError naming the path and how to get the data."""
    cls = _lookup(name)
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; options: "
            f"{', '.join(allowed) or '(none)'}"
        )
    return cls(root=root, split=split, transforms=transforms, **options)


# importing the layouts fills DATASETS
from fcnseg.data import camvid, cityscapes, folder, pet, synthetic, voc  # noqa: E402,F401

__all__ = ["DATASETS", "build_dataset", "dataset_options", "list_datasets", "register_dataset"]
