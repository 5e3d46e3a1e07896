"""Evaluation: labels scored at their own size, batching/TTA/sliding-window equivalences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fcnseg.engine.evaluate import evaluate
from fcnseg.engine.inference import TTA, parse_tta, parse_window, segment
from fcnseg.errors import ConfigError
from fcnseg.metrics import ConfusionMatrix

SIZES = [(37, 53), (40, 40), (29, 61), (37, 53), (50, 33)]


class PixelNet(nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel only."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class StrideNet(nn.Module):
    """Downsamples by 4 then upsamples: logits depend on a neighbourhood (not flip-exact)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, 5, stride=4, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ToyDataset(torch.utils.data.Dataset):
    """Normalised random images and masks (some pixels 255) of the given sizes."""

    classes = ("a", "b", "c")
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    num_classes = 3
    ignore_index = 255

    def __init__(self, sizes=SIZES, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for h, w in sizes:
            image = torch.randn(3, h, w, generator=g)
            mask = torch.randint(0, 3, (h, w), generator=g)
            mask[torch.rand(h, w, generator=g) < 0.1] = 255
            self.items.append((image, mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _by_hand(model: nn.Module, ds: ToyDataset) -> ConfusionMatrix:
    cm = ConfusionMatrix(3)
    with torch.no_grad():
        for image, mask in ds.items:
            cm.update(model(image[None])[0].argmax(0), mask)
    return cm


def test_metrics_match_hand_computed_confusion_and_labels_keep_their_size():
    model, ds = PixelNet(), ToyDataset()
    res = evaluate(model, ds, precision="fp32")
    cm = _by_hand(model, ds)
    assert res["confusion"] == cm.matrix.tolist()
    ref = cm.compute()
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert res[key] == pytest.approx(ref[key])
    # every non-ignored pixel of every label is scored, at the label's own size
    scored = sum(int((m != 255).sum()) for _, m in ds.items)
    assert sum(map(sum, res["confusion"])) == scored
    assert res["num_images"] == len(SIZES)
    assert set(res["per_class"]) == {"a", "b", "c"}
    assert res["per_class"]["b"]["iou"] == pytest.approx(ref["iou"][1])


def test_logits_are_resized_to_the_label_not_the_label_to_the_image():
    class HalfSize(ToyDataset):
        # image at half the label's resolution: the logits must be upsampled to the label
        def __getitem__(self, i):
            image, mask = self.items[i]
            return image[:, ::2, ::2], mask

    ds = HalfSize()
    res = evaluate(PixelNet(), ds, precision="fp32")
    assert sum(map(sum, res["confusion"])) == sum(int((m != 255).sum()) for _, m in ds.items)


@pytest.mark.parametrize("model_cls", [PixelNet])
def test_batch_of_mixed_sizes_equals_one_at_a_time(model_cls):
    model, ds = model_cls(), ToyDataset()
    one = evaluate(model, ds, precision="fp32", batch_size=1)["confusion"]
    four = evaluate(model, ds, precision="fp32", batch_size=4)["confusion"]
    assert one == four


def test_padding_is_cropped_per_image():
    # a single zero-padded 3x3 conv sees zeros beyond the border either way, so padded
    # batches must reproduce the single-image logits exactly, if the crop is right
    model = nn.Conv2d(3, 3, 3, padding=1)
    ims = [torch.randn(3, h, w) for h, w in SIZES]
    together = segment(model, ims, precision="fp32")
    for im, t in zip(ims, together, strict=True):
        alone = segment(model, [im], precision="fp32")[0]
        assert t.shape == alone.shape == (3, *im.shape[-2:])
        torch.testing.assert_close(t, alone, rtol=0, atol=1e-5)


def test_flip_tta_on_flip_equivariant_model_changes_nothing():
    model, ds = PixelNet(), ToyDataset()
    plain = evaluate(model, ds, precision="fp32")
    flipped = evaluate(model, ds, precision="fp32", tta="flip")
    assert flipped["confusion"] == plain["confusion"]
    # probabilities equal the plain softmax
    im = ds.items[0][0]
    p = segment(model, [im], precision="fp32", tta="flip")[0]
    torch.testing.assert_close(p, model(im[None])[0].softmax(0), rtol=0, atol=1e-6)
    assert torch.allclose(p.sum(0), torch.ones(()), atol=1e-5)


def test_multi_scale_tta_scores_at_label_size_and_differs_for_a_strided_model():
    model, ds = StrideNet(), ToyDataset()
    plain = evaluate(model, ds, precision="fp32")
    ms = evaluate(model, ds, precision="fp32", tta="flip,scales=0.5,1,1.5")
    assert sum(map(sum, ms["confusion"])) == sum(map(sum, plain["confusion"]))
    assert ms["confusion"] != plain["confusion"]


def test_tta_parsing():
    assert parse_tta("flip,scales=0.75,1,1.25") == TTA(True, (0.75, 1.0, 1.25))
    assert parse_tta("scales=0.5,1") == TTA(False, (0.5, 1.0))
    assert parse_tta("flip") == TTA(True, (1.0,))
    assert parse_tta("scales=1,2,flip") == TTA(True, (1.0, 2.0))
    assert parse_tta("none") is None and parse_tta(None) is None and parse_tta("") is None
    assert str(parse_tta("flip,scales=0.75,1,1.25")) == "flip,scales=0.75,1,1.25"
    for bad in ("flop", "scales=", "scales=a", "scales=-1", "0.5"):
        with pytest.raises(ConfigError):
            parse_tta(bad)
    assert parse_window(512) == (512, 512)
    assert parse_window("64x96") == (64, 96)
    assert parse_window((64, 96)) == (64, 96)
    for bad in ("0", "ax3", "1x2x3"):
        with pytest.raises(ConfigError):
            parse_window(bad)


@pytest.mark.parametrize("window", [16, (12, 20), 100])
def test_sliding_window_equals_whole_image_for_pixelwise_model(window):
    model = PixelNet()
    im = torch.randn(3, 45, 67)
    whole = segment(model, [im], precision="fp32")[0]
    tiled = segment(model, [im], precision="fp32", sliding_window=window)[0]
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    ds = ToyDataset()
    a = evaluate(model, ds, precision="fp32")["confusion"]
    b = evaluate(model, ds, precision="fp32", sliding_window=window, batch_size=2)["confusion"]
    assert a == b


def test_sliding_window_covers_every_pixel_with_tta():
    model = StrideNet()
    im = torch.randn(3, 45, 67)
    p = segment(model, [im], precision="fp32", sliding_window=24, tta="flip,scales=1,1.5")[0]
    assert p.shape == (3, 45, 67)
    assert torch.allclose(p.sum(0), torch.ones(()), atol=1e-5)


def test_raw_uint8_dataset_needs_mean_std_and_is_normalised():
    class Raw(ToyDataset):
        def __getitem__(self, i):
            h, w = SIZES[i]
            rng = np.random.default_rng(i)
            return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), self.items[i][1].numpy()

    with pytest.raises(ConfigError, match="raw uint8"):
        evaluate(PixelNet(), Raw(), precision="fp32")
    res = evaluate(PixelNet(), Raw(), precision="fp32", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert res["num_images"] == len(SIZES)


def test_class_count_mismatch_and_restores_training_mode():
    model = PixelNet(k=4)
    model.train()
    with pytest.raises(ConfigError, match="4 classes"):
        evaluate(model, ToyDataset(), precision="fp32")
    assert model.training


def test_max_images_and_bf16_runs():
    res = evaluate(PixelNet(), ToyDataset(), precision="bf16", max_images=2, batch_size=2)
    assert res["num_images"] == 2
    assert not math.isnan(res["mean_iou"])
