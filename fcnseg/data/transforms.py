"""Joint image/mask transforms: callables `(image, mask) -> (image, mask)`.

Images stay uint8 (H, W, 3) RGB until `Normalize`; masks are uint8/int (H, W) class
indices with 255 = ignore. Geometric ops use albumentations 2.x with
`mask_interpolation=cv2.INTER_NEAREST` (every mask resize is NEAREST, so no label value is
ever invented) and images that shrink use INTER_AREA (bilinear when they grow). Crops pad
the mask with 255 and the image with the mean colour (which normalises to 0). `ToTensor`
gives float32 (3, H, W) and int64 (H, W).

Randomness: albumentations' generators are reseeded from `torch.initial_seed()` the first
time a pipeline runs in a new process, so DataLoader workers (seeded by torch per worker)
draw different augmentations, and a run seeded with `torch.manual_seed` is reproducible.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fcnseg.data.base import IGNORE_INDEX
from fcnseg.errors import ConfigError

if TYPE_CHECKING:
    import albumentations as A


def _albumentations():
    """albumentations, imported on first use (1.5 s of start-up that evaluation and prediction,
    which only normalise, do not need)."""
    import albumentations

    return albumentations

Pair = tuple

NEAREST = cv2.INTER_NEAREST


class Compose:
    """Apply joint transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, mask):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def set_random_seed(self, seed: int) -> None:
        """Reseed every random op inside (each its own stream derived from `seed`)."""
        for k, t in enumerate(self.transforms):
            if hasattr(t, "set_random_seed"):
                t.set_random_seed(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Albu:
    """Wrap an albumentations transform (or list of them) as a joint `(image, mask)` op.

    Every wrapped op that resizes is forced to NEAREST for the mask."""

    def __init__(self, ops: A.BasicTransform | Sequence[A.BasicTransform]) -> None:
        A = _albumentations()
        ops = [ops] if isinstance(ops, A.BasicTransform) else list(ops)
        self.compose = A.Compose(ops, mask_interpolation=NEAREST, strict=True)
        # distinct streams for distinct pipelines, the same for identical ones
        self._salt = zlib.crc32(repr(self.compose).encode())
        self._pid: int | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        if self._pid != os.getpid():  # first call in this process (e.g. a DataLoader worker)
            self.set_random_seed(torch.initial_seed())
        out = self.compose(image=image, mask=mask)
        return out["image"], out["mask"]

    def set_random_seed(self, seed: int) -> None:
        """Reseed this pipeline (per-sample seeding; also done automatically, from
        `torch.initial_seed()`, the first time it runs in a new process)."""
        seq = np.random.SeedSequence([int(seed) % 2**63, self._salt])
        self.compose.set_random_seed(int(seq.generate_state(1)[0]))
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return "Albu([" + ", ".join(type(t).__name__ for t in self.compose.transforms) + "])"


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def Resize(size: int | Sequence[int]) -> Albu:
    """Resize to (H, W) (or a square): image INTER_AREA when shrinking else bilinear, mask NEAREST."""
    h, w = _size(size)
    return Albu(
        _albumentations().Resize(
            h,
            w,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=NEAREST,
            area_for_downscale="image",
        )
    )


def RandomScale(scale: tuple[float, float] = (0.5, 2.0), base_size: int | None = None) -> Albu:
    """Scale by a factor drawn uniformly from `scale`; with `base_size`, the shorter side is
    first set to `base_size` (so the final shorter side is `base_size * factor`). Images
    that shrink use INTER_AREA."""
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise ConfigError(f"scale={scale!r}: need 0 < low <= high")
    ops: list = []
    if base_size is not None:
        ops.append(
            _albumentations().SmallestMaxSize(
                max_size=int(base_size),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=NEAREST,
                area_for_downscale="image",
            )
        )
    ops.append(
        _albumentations().RandomScale(
            scale_limit=(lo - 1.0, hi - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=NEAREST,
            area_for_downscale="image",
            p=1.0,
        )
    )
    return Albu(ops)


def RandomCrop(
    size: int | Sequence[int],
    *,
    fill: float | Sequence[float] = 0,
    fill_mask: int = IGNORE_INDEX,
) -> Albu:
    """Random (H, W) crop; smaller inputs are padded first (image `fill`, mask 255)."""
    h, w = _size(size)
    fill_t = fill if isinstance(fill, int | float) else tuple(float(v) for v in fill)
    kwargs = dict(pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=fill_t, fill_mask=fill_mask, pad_position="center", p=1.0)
    return Albu(_albumentations().RandomCrop(h, w, **kwargs))


def HorizontalFlip(p: float = 0.5) -> Albu:
    return Albu(_albumentations().HorizontalFlip(p=p))


def ColorJitter(strength: float = 0.2, hue: float = 0.02, p: float = 1.0) -> Albu:
    """Brightness, contrast and saturation by factors in [1 - s, 1 + s]; hue by +-`hue`."""
    s = float(strength)
    return Albu(_albumentations().ColorJitter(brightness=s, contrast=s, saturation=s, hue=hue, p=p))


class Normalize:
    """Image only: uint8 -> float32 (x / 255 - mean) / std, channels last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean={mean!r}, std={std!r}: need three values each, std > 0")
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        return (image.astype(np.float32) - self.mean) * self.inv_std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={(self.mean / 255).round(4).tolist()})"


class ToTensor:
    """image (H, W, 3) -> float32 tensor (3, H, W); mask (H, W) -> int64 tensor (H, W)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        img = torch.from_numpy(np.asarray(image).astype(np.float32)).permute(2, 0, 1)
        img = img.contiguous()
        return img, torch.from_numpy(np.asarray(mask).astype(np.int64))

    def __repr__(self) -> str:
        return "ToTensor()"


class NormalizeToTensor:
    """Normalize + ToTensor fused (one pass, in torch): uint8 (H, W, 3) -> float32 (3, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        Normalize(mean, std)  # validates
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        img = torch.from_numpy(np.asarray(image).astype(np.float32))  # astype copies: writable
        img = img.permute(2, 0, 1).sub_(self.mean).mul_(self.inv_std).contiguous()
        return img, torch.from_numpy(np.asarray(mask).astype(np.int64))

    def __repr__(self) -> str:
        return f"NormalizeToTensor(mean={(self.mean.view(3) / 255).tolist()})"


def train_transforms(
    crop_size: int | Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] | None = (0.5, 2.0),
    hflip: bool = True,
    rotate90: bool = False,
    color_jitter: float = 0.2,
    base_size: int | None = None,
) -> Compose:
    """Training preset: random scale (INTER_AREA for frames that shrink) -> random quarter
    turn (``rotate90``; before the crop, so crops keep their shape) -> random crop (mask
    padded 255) -> flip -> colour jitter -> normalise -> tensors `(3, H, W)` float32 and
    `(H, W)` int64 of `crop_size`."""
    ops: list = []
    if scale is not None:
        ops += RandomScale(scale, base_size).compose.transforms
    elif base_size is not None:
        ops += RandomScale((1.0, 1.0), base_size).compose.transforms[:1]
    if rotate90:
        ops.append(_albumentations().RandomRotate90(p=1.0))
    fill = tuple(float(round(m * 255)) for m in mean)  # pads normalise to ~0
    ops += RandomCrop(crop_size, fill=fill).compose.transforms
    if hflip:
        ops += HorizontalFlip().compose.transforms
    if color_jitter:
        ops += ColorJitter(color_jitter).compose.transforms
    # one albumentations pipeline (one random stream), then the fused normalise/to-tensor
    return Compose([Albu(ops), NormalizeToTensor(mean, std)])


def eval_transforms(*, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Evaluation preset: normalise + tensors only; the mask is never resized."""
    return Compose([NormalizeToTensor(mean, std)])


def pad_collate(batch: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `(image (3, H, W) float, mask (H, W) int64)` pairs of different sizes by padding
    bottom/right to the largest H and W: image with 0, mask with 255.
    Returns images `(N, 3, H, W)` and masks `(N, H, W)`."""
    if not batch:
        raise ValueError("pad_collate: empty batch")
    hmax = max(int(img.shape[-2]) for img, _ in batch)
    wmax = max(int(img.shape[-1]) for img, _ in batch)
    images, masks = [], []
    for img, msk in batch:
        img, msk = torch.as_tensor(img), torch.as_tensor(msk)
        if img.shape[-2:] != msk.shape[-2:]:
            raise ValueError(f"pad_collate: image {tuple(img.shape)} vs mask {tuple(msk.shape)}")
        ph, pw = hmax - img.shape[-2], wmax - img.shape[-1]
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            msk = F.pad(msk, (0, pw, 0, ph), value=IGNORE_INDEX)
        images.append(img)
        masks.append(msk.long())
    return torch.stack(images), torch.stack(masks)


def copy_paste(
    images: torch.Tensor, masks: torch.Tensor, classes: Sequence[int], p: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class copy-paste on a batch (ClassMix, Olsson et al. 2021; the semantic-segmentation
    form of Ghiasi et al. 2021's copy-paste): with probability `p` each crop receives, at the
    same place, every pixel of `classes` from another crop of the batch, image and label alike.
    Objects of those classes thus appear over other backgrounds than the ones they were seen on.

    `images` `(N, C, H, W)` and `masks` `(N, H, W)` (255 = ignore, never pasted) of one crop
    size; the sources are a random derangement of the batch (no crop pastes onto itself).
    Returns new tensors; the inputs are not modified. A batch of one is returned as is."""
    if not 0 <= p <= 1:
        raise ConfigError(f"copy_paste={p!r}: the probability that a crop receives pasted pixels must be in [0, 1]")
    n = images.shape[0]
    if n < 2 or p == 0 or not len(classes):
        return images, masks
    if images.shape[-2:] != masks.shape[-2:] or images.shape[0] != masks.shape[0]:
        raise ValueError(f"copy_paste: images {tuple(images.shape)} and masks {tuple(masks.shape)} differ in batch or size")
    order = torch.randperm(n, generator=generator)
    src = torch.empty_like(order)
    src[order] = order.roll(1)  # crop order[i] takes from order[i - 1]: a single cycle, never itself
    take = torch.rand(n, generator=generator) < p
    lut = torch.zeros(256, dtype=torch.bool, device=masks.device)
    lut[torch.as_tensor(list(classes), dtype=torch.long, device=masks.device)] = True
    src, take = src.to(masks.device), take.to(masks.device)
    paste = lut[masks[src].clamp(0, 255)] & take.view(n, 1, 1)
    images = torch.where(paste.unsqueeze(1), images[src], images)
    masks = torch.where(paste, masks[src], masks)
    return images, masks
