"""Joint transforms: masks never gain label values, shapes/dtypes, padding, presets,
pad_collate, per-worker randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.data import build_dataset
from fcnseg.data.transforms import (
    ColorJitter,
    Compose,
    HorizontalFlip,
    Normalize,
    RandomCrop,
    RandomScale,
    Resize,
    ToTensor,
    copy_paste,
    eval_transforms,
    pad_collate,
    train_transforms,
)
from fcnseg.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def many_valued_pair(rng, h, w):
    """A mask with many distinct values in small regions and an unrelated image."""
    values = rng.choice(np.arange(0, 255), size=40, replace=False).astype(np.uint8)
    cells = rng.choice(values, size=(h // 3 + 1, w // 3 + 1))
    mask = np.kron(cells, np.ones((3, 3), np.uint8))[:h, :w]
    mask[rng.random((h, w)) < 0.05] = 255
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, mask


def test_no_transform_invents_label_values():
    rng = np.random.default_rng(0)
    ops = [
        Resize((37, 53)), Resize(91), RandomScale((0.3, 2.5)), RandomScale((0.5, 2), base_size=40),
        RandomCrop(48), HorizontalFlip(p=1.0), ColorJitter(0.4),
        train_transforms(40, mean=MEAN, std=STD, scale=(0.25, 3.0)),
    ]  # fmt: skip
    for trial in range(60):
        torch.manual_seed(trial)
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        image, mask = many_valued_pair(rng, h, w)
        allowed = set(np.unique(mask).tolist()) | {255}
        for op in ops:
            _, out = op(image, mask)
            got = set(np.unique(np.asarray(out)).tolist())
            assert got <= allowed, (op, got - allowed)


def test_resize_shapes_and_nearest_mask():
    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 7
    img, msk = Resize((20, 30))(image, mask)  # shrink
    assert img.shape == (20, 30, 3) and msk.shape == (20, 30)
    assert set(np.unique(msk)) == {0, 7} and (msk[:, 15:] == 7).all() and (msk[:, :15] == 0).all()
    img, msk = Resize((81, 121))(image, mask)  # grow, odd sizes
    assert img.shape == (81, 121, 3) and set(np.unique(msk)) == {0, 7}


def test_random_scale_shrinks_with_inter_area():
    """A 0.3x shrink of one-pixel stripes: INTER_AREA averages them (every pixel within 20 of
    the mean 100), where bilinear sampling would give pixels near 0 or 200; the training
    preset's scale op shrinks the same way."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, ::2] = 200  # columns alternate 200, 0
    mask = np.zeros((64, 64), np.uint8)
    area, _ = RandomScale((0.3, 0.3))(image, mask)
    assert area.shape == (19, 19, 3)
    assert np.abs(area.astype(int) - 100).max() <= 20
    scale_op = train_transforms(40, mean=MEAN, std=STD, scale=(0.5, 1.5)).transforms[0].compose.transforms[0]
    assert scale_op.area_for_downscale == "image"


def test_random_crop_pads_mask_with_ignore_and_image_with_fill():
    image = np.full((10, 12, 3), 50, np.uint8)
    mask = np.ones((10, 12), np.uint8)
    img, msk = RandomCrop(20, fill=(1, 2, 3))(image, mask)
    assert img.shape == (20, 20, 3) and msk.shape == (20, 20)
    assert (msk == 255).sum() == 400 - 120 and (msk == 1).sum() == 120
    assert ((img == 50).all(2) == (msk == 1)).all()
    assert (img[msk == 255] == [1, 2, 3]).all()


def test_flip_is_joint():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, 0] = 200
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 0] = 3
    img, msk = HorizontalFlip(p=1.0)(image, mask)
    assert (img[:, -1] == 200).all() and (msk[:, -1] == 3).all() and (msk[:, 0] == 0).all()


def test_color_jitter_changes_image_only():
    rng = np.random.default_rng(1)
    image, mask = many_valued_pair(rng, 30, 30)
    img, msk = ColorJitter(0.5)(image, mask)
    assert img.dtype == np.uint8 and not np.array_equal(img, image)
    assert np.array_equal(msk, mask)


def test_normalize_and_to_tensor():
    image = np.full((5, 7, 3), 255, np.uint8)
    mask = np.full((5, 7), 2, np.uint8)
    img, msk = Compose([Normalize(MEAN, STD), ToTensor()])(image, mask)
    assert img.shape == (3, 5, 7) and img.dtype == torch.float32
    assert msk.shape == (5, 7) and msk.dtype == torch.int64
    # white, ImageNet statistics: (1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225
    torch.testing.assert_close(img[:, 0, 0], torch.tensor([2.2489083, 2.4285715, 2.6400001]))
    with pytest.raises(ConfigError):
        Normalize((0.5, 0.5), STD)


def test_train_preset_output():
    ds = build_dataset("synthetic", length=4, size=(60, 90))
    t = train_transforms((48, 64), mean=MEAN, std=STD)
    for i in range(4):
        x, y = t(*ds.load(i))
        assert x.shape == (3, 48, 64) and x.dtype == torch.float32
        assert y.shape == (48, 64) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 2, 255}
        assert -3 < float(x.min()) and float(x.max()) < 3


def test_rotate90_turns_image_and_mask_together_and_keeps_the_crop_shape():
    # the top-left quadrant marked in mask and image: after a quarter turn they still agree,
    # and over a few draws the mark lands in all four corners (never, without rotate90)
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, :20] = 1
    image = np.repeat((mask * 200)[..., None], 3, axis=2).astype(np.uint8)

    def corners(**kw):
        t = train_transforms((40, 40), mean=MEAN, std=STD, scale=None, hflip=False, color_jitter=0, **kw)
        t.set_random_seed(0)
        seen = set()
        for _ in range(40):
            x, y = t(image, mask)
            assert torch.equal(x[0] > 0, y == 1) and int(y.sum()) == 400  # turned together
            seen.add((bool(y[0].any()), bool(y[:, 0].any())))  # (mark on top, mark on the left)
        return seen

    assert corners(rotate90=True) == {(True, True), (True, False), (False, True), (False, False)}
    assert corners() == {(True, True)}
    # a non-square image is turned before the crop: crops keep their shape
    t = train_transforms((32, 48), mean=MEAN, std=STD, scale=None, rotate90=True, color_jitter=0)
    for _ in range(8):
        x, y = t(np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), np.uint8))
        assert x.shape == (3, 32, 48) and y.shape == (32, 48)


def test_train_preset_pads_to_normalised_zero():
    t = train_transforms(64, mean=MEAN, std=STD, scale=None, hflip=False, color_jitter=0)
    x, y = t(np.full((10, 10, 3), 128, np.uint8), np.zeros((10, 10), np.uint8))
    pad = y == 255
    assert pad.sum() == 64 * 64 - 100
    assert x[:, pad].abs().max() < 0.02  # the mean colour normalises to ~0


def test_eval_preset_never_resizes_the_mask():
    ds = build_dataset("synthetic", length=2, size=(77, 101))
    image, mask = ds.load(0)
    x, y = eval_transforms(mean=MEAN, std=STD)(image, mask)
    assert x.shape == (3, 77, 101) and torch.equal(y, torch.from_numpy(mask).long())


def test_seeded_pipelines_reproducible_and_per_process():
    ds = build_dataset("synthetic", length=2)
    image, mask = ds.load(0)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        t = train_transforms(64, mean=MEAN, std=STD)
        outs.append([t(image, mask)[0] for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1], strict=True))
    assert not torch.equal(outs[0][0], outs[0][1])  # successive calls differ


def test_dataloader_workers_draw_different_augmentations():
    ds = build_dataset("synthetic", length=4, size=(64, 64))
    # the same sample in every position: differences can only come from augmentation
    ds.load = lambda i, _load=ds.load: _load(0)
    ds.transforms = train_transforms(48, mean=MEAN, std=STD)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=pad_collate)
    batches = [x for x, _ in loader]
    assert not torch.equal(batches[0], batches[1])  # worker 0 vs worker 1


def test_pad_collate_pads_to_max():
    a = (torch.ones(3, 5, 6), torch.zeros(5, 6, dtype=torch.int64))
    b = (torch.full((3, 7, 4), 2.0), torch.ones(7, 4, dtype=torch.int64))
    x, y = pad_collate([a, b])
    assert x.shape == (2, 3, 7, 6) and y.shape == (2, 7, 6) and y.dtype == torch.int64
    assert (x[0, :, 5:] == 0).all() and (y[0, 5:] == 255).all() and (y[0, :5] == 0).all()
    assert (x[1, :, :, 4:] == 0).all() and (y[1, :, 4:] == 255).all() and (y[1, :, :4] == 1).all()
    same = pad_collate([a, a])
    assert same[0].shape == (2, 3, 5, 6) and torch.equal(same[0][0], a[0])


def test_set_random_seed_makes_a_sample_reproducible():
    image, mask = build_dataset("synthetic", length=1).load(0)
    t = train_transforms(64, mean=MEAN, std=STD)
    t.set_random_seed(7)
    a = t(image, mask)
    t(image, mask)
    t.set_random_seed(7)
    b = t(image, mask)
    t.set_random_seed(8)
    c = t(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_copy_paste_moves_exactly_the_chosen_classes_from_another_crop():
    g = torch.Generator().manual_seed(0)
    n, h, w = 6, 20, 24
    masks = torch.randint(0, 4, (n, h, w), generator=g)
    masks[:, :3] = 255  # padding: never pasted
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()  # crop i is all i
    before = images.clone(), masks.clone()
    out_img, out_mask = copy_paste(images, masks, [1, 3], 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])  # inputs untouched
    sources = []
    for i in range(n):
        foreign = out_img[i, 0] != i
        values = out_img[i, 0][foreign].unique()
        assert len(values) == 1, i  # one source crop per crop
        j = int(values)
        assert j != i
        sources.append(j)
        rare = (masks[j] == 1) | (masks[j] == 3)
        assert torch.equal(foreign, rare)  # exactly the source's class-1/3 pixels, at the same place
        assert torch.equal(out_mask[i][rare], masks[j][rare])
        assert torch.equal(out_mask[i][~rare], masks[i][~rare]) and (out_mask[i][:3] == 255).all()
        assert (out_img[i, 1:] == out_img[i, :1]).all()  # all channels move together
    assert sorted(sources) == list(range(n))  # every crop is a source once


def test_copy_paste_rate_and_no_ops():
    n, h, w = 8, 8, 8
    masks = torch.zeros(n, h, w, dtype=torch.long)
    masks[:, 2:5, 2:5] = 1
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(250):
        out, _ = copy_paste(images, masks, [1], 0.3, generator=g)
        changed += int((out[:, 0, 3, 3] != images[:, 0, 3, 3]).sum())  # a crop took another's class-1 square
    assert changed / (250 * n) == pytest.approx(0.3, abs=0.03)
    assert copy_paste(images, masks, [1], 0.0)[0] is images  # p = 0, no classes, a batch of one: no-ops
    assert copy_paste(images, masks, [], 1.0)[0] is images
    one = images[:1]
    assert copy_paste(one, masks[:1], [1], 1.0)[0] is one
    with pytest.raises(ConfigError, match=r"copy_paste=1.5: the probability .* must be in \[0, 1\]"):
        copy_paste(images, masks, [1], 1.5)
    with pytest.raises(ValueError, match="differ in batch or size"):
        copy_paste(images, masks[:, :4], [1], 1.0)
