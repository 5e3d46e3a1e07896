"""Dataset validation: find every bad file before training meets it.

    problems = check_dataset("camvid", "data/camvid")
    print(format_report(problems))
    dataset.exclude(bad_paths(problems))     # or refuse to train

Scans, for each split that is on disk: pairs missing one side, files that cannot be
decoded or are truncated (every file is fully decoded; PIL's LOAD_TRUNCATED_IMAGES is
forced off while scanning), image/mask size mismatches, mask values outside the classes,
and a missing or empty root.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFile

from fcnseg.data import DATASETS, build_dataset, list_datasets
from fcnseg.data.base import BAD_FILE_HINT, SegmentationDataset, probe_image
from fcnseg.errors import ConfigError, DataError

# problems about the dataset as a whole: no file list can fix them by exclusion
ROOT_KINDS = ("missing-root", "empty-root", "missing-split", "empty-split")
HINTS = {
    "missing-mask": "add the mask, or delete the image (or exclude the pair from training)",
    "missing-image": "add the image, or delete the mask (or exclude the pair from training)",
    "size-mismatch": "re-export the mask at the image's size, or exclude the pair",
    "unreadable": BAD_FILE_HINT,
    "truncated": BAD_FILE_HINT,
    "bad-values": "fix the mask, or map the values to classes (folder: the classes file)",
}


@dataclass(frozen=True)
class Problem:
    """One problem found by `check_dataset`. `path` is the file (or root) at fault."""

    path: Path
    kind: str
    message: str
    hint: str = ""

    @property
    def fatal(self) -> bool:
        """True for root-level problems that excluding files cannot fix."""
        return self.kind in ROOT_KINDS

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}" + (f" -- fix: {self.hint}" if self.hint else "")


def _from_error(err: DataError, fallback: Path | None = None) -> Problem:
    kind = getattr(err, "kind", "unreadable")
    return Problem(
        path=getattr(err, "path", None) or fallback or Path("."),
        kind=kind,
        message=getattr(err, "detail", str(err)),
        hint=getattr(err, "hint", "") or HINTS.get(kind, ""),
    )


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def check_pair(
    dataset: SegmentationDataset, image_path: Path, mask_path: Path, *, thorough: bool = False
) -> list[Problem]:
    """Check one pair; return its problems (empty when it is fine). The mask is always
    fully decoded (its values are checked); the image is probed (`probe_image`: PNG CRCs,
    JPEG entropy data) unless `thorough`, which decodes it fully as training would."""
    problems: list[Problem] = []
    image_hw = mask_hw = None
    try:
        if thorough or type(dataset).read_image is not SegmentationDataset.read_image:
            image_hw = dataset.read_image(image_path).shape[:2]
        else:
            image_hw = probe_image(image_path)
    except DataError as e:
        problems.append(_from_error(e, image_path))
    try:
        raw = dataset.read_mask_raw(mask_path)
        mask_hw = raw.shape[:2]
        dataset.label_map(raw, mask_path)
    except DataError as e:
        problems.append(_from_error(e, mask_path))
    if image_hw is not None and mask_hw is not None and image_hw != mask_hw and not thorough:
        with contextlib.suppress(DataError):  # confirm with the decoder training uses
            image_hw = dataset.read_image(image_path).shape[:2]
    if image_hw is not None and mask_hw is not None and image_hw != mask_hw:
        problems.append(
            Problem(
                mask_path,
                "size-mismatch",
                f"{mask_path}: mask is {mask_hw[1]}x{mask_hw[0]} but image {image_path.name} "
                f"is {image_hw[1]}x{image_hw[0]}",
                HINTS["size-mismatch"],
            )
        )
    return problems


def check_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    splits: Iterable[str] | None = None,
    workers: int | None = None,
    thorough: bool = False,
    **options,
) -> list[Problem]:
    """Check dataset `name` at `root`; returns every problem found (empty list: all good).

    `splits` defaults to the splits that cover the data once (e.g. camvid: train, val,
    test), skipping those not on disk. Each pair is checked once, `workers` threads at a
    time (default: CPU count, at most 8); `thorough` fully decodes images too (slower)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    cls = DATASETS[name]
    explicit = splits is not None
    split_list = list(splits) if explicit else list(cls.check_splits)
    problems: list[Problem] = []
    missing_splits: list[Problem] = []
    pairs: dict[tuple[Path, Path], SegmentationDataset] = {}
    found_any = False
    for split in split_list:
        try:
            ds = build_dataset(name, root=root, split=split, **options)
        except DataError as e:
            p = _from_error(e, Path(root) if root else None)
            if p.kind in ("missing-root", "empty-root"):
                return [p]  # nothing else can be checked
            (missing_splits if p.kind == "missing-split" else problems).append(p)
            problems += _unpaired_problems(getattr(e, "unpaired", []))
            continue
        found_any = True
        problems += _unpaired_problems(ds.unpaired)
        for pair in ds.samples:
            pairs.setdefault(pair, ds)
    if explicit or not found_any:
        problems += missing_splits
    n_workers = workers or min(8, os.cpu_count() or 1)
    with _strict_decoding(), ThreadPoolExecutor(n_workers) as pool:
        for found in pool.map(
            lambda item: check_pair(item[1], *item[0], thorough=thorough), pairs.items()
        ):
            problems += found
    unique: dict[tuple[Path, str], Problem] = {}
    for p in problems:
        unique.setdefault((p.path, p.kind), p)
    return list(unique.values())


def _unpaired_problems(unpaired: Iterable[tuple[Path, str]]) -> list[Problem]:
    out = []
    for path, kind in unpaired:
        what = "mask" if kind == "missing-mask" else "image"
        out.append(Problem(path, kind, f"{path}: {what} file not found", HINTS[kind]))
    return out


def bad_paths(problems: Iterable[Problem]) -> set[Path]:
    """Files that `dataset.exclude()` should leave out (root-level problems excluded)."""
    return {p.path for p in problems if not p.fatal}


def format_report(problems: list[Problem], *, limit: int | None = None) -> str:
    """One line per problem (kind, file, what, fix), then a summary line."""
    if not problems:
        return "no problems found"
    shown = problems if limit is None else problems[:limit]
    lines = [str(p) for p in shown]
    if len(shown) < len(problems):
        lines.append(f"... and {len(problems) - len(shown)} more")
    counts = Counter(p.kind for p in problems)
    files = len({p.path for p in problems})
    summary = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
    lines.append(f"{len(problems)} problem(s) in {files} file(s) ({summary})")
    return "\n".join(lines)
