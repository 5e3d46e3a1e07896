"""Evaluation: labels scored at their own size, batching/TTA/sliding-window equivalences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fcnseg.errors import ConfigError
from fcnseg.inference.evaluate import evaluate
from fcnseg.inference.segment import TTA, parse_tta, parse_window, segment
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


@pytest.mark.parametrize("model_cls", [PixelNet, StrideNet])
@pytest.mark.parametrize("batch_size", [2, 4])
def test_batch_of_mixed_sizes_equals_one_at_a_time(model_cls, batch_size):
    model, ds = model_cls(), ToyDataset(sizes=SIZES * 3)
    one = evaluate(model, ds, precision="fp32", batch_size=1)
    many = evaluate(model, ds, precision="fp32", batch_size=batch_size)
    assert one["confusion"] == many["confusion"] and many["num_images"] == len(SIZES) * 3


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


def test_rot90_tta_turns_each_view_back_onto_the_image():
    # a pixelwise model is turn-equivariant: the 8 views average to the plain probabilities;
    # a strided one is not, and its 8-view average equals the views turned back by hand
    im = torch.randn(3, 24, 40)  # not square: the turned views are 40x24
    pix = PixelNet()
    p = segment(pix, [im], precision="fp32", tta="flip,rot90")[0]
    torch.testing.assert_close(p, pix(im[None])[0].softmax(0), rtol=0, atol=1e-6)
    model = StrideNet()
    p = segment(model, [im], precision="fp32", tta="flip,rot90")[0]
    views = []
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(im, k, dims=(-2, -1))
            x = x.flip(-1) if flip else x
            lg = model(x[None])[0]
            lg = lg.flip(-1) if flip else lg
            views.append(torch.rot90(lg, -k, dims=(-2, -1)).softmax(0))
    torch.testing.assert_close(p, torch.stack(views).mean(0), rtol=0, atol=1e-5)
    assert not torch.allclose(p, model(im[None])[0].softmax(0), atol=1e-3)  # the views differ
    assert parse_tta("flip,rot90").views == 8 and parse_tta("rot90,scales=0.5,1").views == 8


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
    assert parse_tta("flip,rot90,scales=0.75,1") == TTA(True, (0.75, 1.0), rot90=True)
    assert str(parse_tta("rot90,flip")) == "flip,rot90" and not parse_tta("rot90").trivial
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


def test_max_images_and_bf16_scores_like_fp32():
    model, ds = PixelNet(), ToyDataset()
    bf16 = evaluate(model, ds, precision="bf16", max_images=2, batch_size=2)
    fp32 = evaluate(model, ds, precision="fp32", max_images=2, batch_size=2)
    labelled = sum(int((m != 255).sum()) for _, m in ds.items[:2])
    assert bf16["num_images"] == 2 and sum(map(sum, bf16["confusion"])) == labelled
    # bf16 rounds the logits, so a pixel near a tie may change class (0-0.25 % measured), no more
    changed = np.abs(np.array(bf16["confusion"]) - np.array(fp32["confusion"])).sum() / 2
    assert changed <= 0.01 * labelled
    assert bf16["mean_iou"] == pytest.approx(fp32["mean_iou"], abs=0.01)


# --------------------------------------------------------------------------- `fcnseg eval`

CAMVID_SIZES = [(37, 53), (29, 41), (37, 53), (44, 35), (33, 64)]


def _camvid(root, sizes=CAMVID_SIZES, split="val"):
    """A CamVid-layout folder with labels 0..10 and 11 (void) at odd, mixed sizes."""
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(root / split / f"f{i}.png")
        Image.fromarray(rng.integers(0, 12, (h, w), np.uint8)).save(root / f"{split}annot" / f"f{i}.png")
    return root


def _real_checkpoint(path, data_root, **config):
    """fcn8s/resnet18 with random score layers (zero-initialised ones predict one class)."""
    from fcnseg import build_model
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

    model = build_model("fcn8s", backbone="resnet18", num_classes=11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 0.05)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": list(CAMVID_CLASSES),
            "palette": CAMVID_PALETTE,
            "mean": (0.4, 0.45, 0.5),
            "std": (0.25, 0.25, 0.25),
            "config": {"data": "camvid", "data_root": str(data_root), "data_options": {},
                       "val_split": "val", **config},
        },
        path,
    )
    return model.eval()


def _run_json(argv, capsys):
    import json

    from fcnseg.cli import main

    code = main(["eval", *argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_cli_json_matches_hand_computed_scores_at_label_size(tmp_path, capsys):
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms

    sizes = [(37, 53), (29, 41), (37, 53)]  # few shapes: each new one costs the real net time
    root = _camvid(tmp_path / "camvid", sizes=sizes)
    model = _real_checkpoint(tmp_path / "best.pt", root)
    res = _run_json(["--checkpoint", str(tmp_path / "best.pt"), "--precision", "fp32"], capsys)
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "per_class", "split", "num_images",
                "checkpoint", "tta"):
        assert key in res
    assert res["split"] == "val" and res["num_images"] == len(sizes) and res["tta"] is None
    assert list(res["per_class"]) == list(build_dataset("camvid", root=root, split="val").classes)

    # by hand: the same model on each image at its own size, no resizing anywhere
    ds = build_dataset("camvid", root=root, split="val",
                       transforms=eval_transforms(mean=(0.4, 0.45, 0.5), std=(0.25,) * 3))
    cm = ConfusionMatrix(11)
    valid = 0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            cm.update(model(x[None])[0].argmax(0), y)
            valid += int((y != 255).sum())
    assert res["confusion"] == cm.matrix.tolist()
    assert sum(map(sum, res["confusion"])) == valid  # every label pixel (minus void) at 37x53 etc.
    ref = cm.compute()
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert res[key] == pytest.approx(ref[key])
    for name, iou in zip(res["per_class"], ref["iou"], strict=True):
        got = res["per_class"][name]["iou"]
        assert (got is None and math.isnan(iou)) or got == pytest.approx(iou)

    # batches of mixed sizes: test_batch_of_mixed_sizes_equals_one_at_a_time, and through the
    # CLI test_cli_default_tta_from_checkpoint_and_tta_none (--batch-size 4)


def test_cli_default_tta_from_checkpoint_and_tta_none(tmp_path, capsys, monkeypatch):
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.models import MODELS

    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    root = _camvid(tmp_path / "camvid")
    model = PixelNet(11)
    ckpt = {
        "model": model.state_dict(),
        "model_config": {"name": "test-pixelnet", "num_classes": 11},
        "mean": (0.5,) * 3, "std": (0.25,) * 3,
        "config": {"data": "camvid", "data_root": str(root), "eval_tta": "flip,scales=0.5,1"},
    }
    save_checkpoint(ckpt, tmp_path / "c.pt")
    base = ["--checkpoint", str(tmp_path / "c.pt"), "--precision", "fp32"]
    assert _run_json(base, capsys)["tta"] == "flip,scales=0.5,1"
    assert _run_json([*base, "--tta", "none"], capsys)["tta"] is None
    assert _run_json([*base, "--tta", "flip"], capsys)["tta"] == "flip"
    # explicit data flags and a batch of mixed sizes give the 1x1 model's exact confusion
    a = _run_json([*base, "--tta", "none", "--data", "camvid", "--data-root", str(root)], capsys)
    b = _run_json([*base, "--tta", "none", "--batch-size", "4", "--max-images", "5"], capsys)
    assert a["confusion"] == b["confusion"] and b["num_images"] == 5
    # a run that validated on another dataset: eval defaults to that one
    _camvid(tmp_path / "other", sizes=[(30, 30)] * 2)
    ckpt["config"] = {"data": "synthetic", "val_data": "camvid", "val_data_root": str(tmp_path / "other")}
    save_checkpoint(ckpt, tmp_path / "c.pt")
    c = _run_json(base, capsys)
    assert c["data"] == "camvid" and c["num_images"] == 2 and c["tta"] is None


def test_evaluate_checkpoint_gives_what_the_cli_prints_and_runs_another_callable(tmp_path, capsys, monkeypatch):
    import fcnseg
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.models import MODELS

    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    root = _camvid(tmp_path / "camvid", sizes=[(24, 30), (20, 26)])
    ckpt = {"model": PixelNet(11).state_dict(), "model_config": {"name": "test-pixelnet", "num_classes": 11},
            "mean": (0.5,) * 3, "std": (0.25,) * 3, "classes": [f"c{i}" for i in range(11)],
            "config": {"data": "camvid", "data_root": str(root), "eval_tta": "flip"}}
    save_checkpoint(ckpt, tmp_path / "c.pt")
    from fcnseg.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--precision", "fp32", "--json"]) == 0
    captured = capsys.readouterr()
    cli = json.loads(captured.out)
    # the checkpoint's class names differ from CamVid's: one warning line, the scores still printed
    assert captured.err.startswith("fcnseg eval: warning: class names differ between checkpoint (c0, c1")
    with pytest.warns(UserWarning, match=r"class names differ .* dataset \(Sky, Building"):
        lib = fcnseg.evaluate_checkpoint(tmp_path / "c.pt", precision="fp32")
    assert lib["tta"] == "flip" and lib["crf"] is None and lib["num_images"] == 2
    assert {k: v for k, v in lib.items() if k != "per_class"} == {k: v for k, v in cli.items() if k != "per_class"}

    # another inference callable (here: always class 3) runs in place of the checkpoint's network
    def always_3(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 11, *x.shape[-2:], device=x.device)
        logits[:, 3] = 1.0
        return logits

    ckpt["classes"] = None
    res = fcnseg.evaluate_checkpoint(ckpt, tta=None, model=always_3, precision="fp32")
    confusion = np.array(res["confusion"])
    labelled = confusion.sum()
    assert res["checkpoint"] is None and res["tta"] is None
    assert labelled > 0 and confusion[:, 3].sum() == labelled  # every labelled pixel predicted 3
    assert res["pixel_acc"] == pytest.approx(confusion[3, 3] / labelled)


def test_cli_crf_from_checkpoint_matches_refining_by_hand(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.inference.crf import CRF, crf_refine
    from fcnseg.models import MODELS

    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    root = _camvid(tmp_path / "camvid", sizes=[(24, 30), (24, 30), (20, 26)])
    torch.manual_seed(0)
    model = PixelNet(11)
    spec = "appearance=3,theta_a=3,theta_b=60,radius=2,dilation=1"
    mean, std = (0.5,) * 3, (0.25,) * 3
    ckpt = {"model": model.state_dict(), "model_config": {"name": "test-pixelnet", "num_classes": 11},
            "mean": mean, "std": std,
            "config": {"data": "camvid", "data_root": str(root), "eval_tta": "flip", "eval_crf": spec}}
    save_checkpoint(ckpt, tmp_path / "c.pt")
    base = ["--checkpoint", str(tmp_path / "c.pt"), "--precision", "fp32"]
    res = _run_json(base, capsys)
    assert res["crf"] == spec and res["tta"] == "flip"
    plain = _run_json([*base, "--crf", "none"], capsys)
    assert plain["crf"] is None and plain["confusion"] != res["confusion"]
    assert _run_json([*base, "--crf", "iterations=1"], capsys)["crf"] == "iterations=1"

    ds = build_dataset("camvid", root=root, split="val", transforms=eval_transforms(mean=mean, std=std))
    cm = ConfusionMatrix(11)
    model.eval()
    for i in range(len(ds)):
        x, y = ds[i]
        colours = torch.from_numpy(np.array(Image.open(root / "val" / f"f{i}.png").convert("RGB")))
        p = segment(model, [x], precision="fp32", tta="flip", probs=True)[0]
        cm.update(crf_refine(p, colours, CRF(appearance=3, theta_a=3, theta_b=60, radius=2, dilation=1)).argmax(0), y)
    assert res["confusion"] == cm.matrix.tolist()

    ckpt["config"]["eval_crf"] = "sigma=3"
    save_checkpoint(ckpt, tmp_path / "c.pt")
    from fcnseg.cli import main

    assert main(["eval", *base]) == 2
    err = capsys.readouterr().err
    assert "checkpoint config eval_crf: CRF spec 'sigma=3': unknown key 'sigma'" in err and "override it with --crf" in err


def test_cli_text_table_and_plot(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.cli import main
    from fcnseg.models import MODELS

    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    root = _camvid(tmp_path / "camvid", split="test")
    save_checkpoint({"model": PixelNet(11).state_dict(),
                     "model_config": {"name": "test-pixelnet", "num_classes": 11},
                     "mean": (0.5,) * 3, "std": (0.25,) * 3, "config": {}}, tmp_path / "c.pt")
    code = main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--data", "camvid", "--data-root",
                 str(root), "--split", "test", "--plots", str(tmp_path / "plots"), "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pixel acc" in out and "mean IU" in out and "f.w. IU" in out
    assert "Bicyclist" in out and "camvid/test, 5 images" in out
    png = Image.open(tmp_path / "plots" / "confusion.png")
    assert png.size[0] > 300 and png.size[1] > 300


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "{tmp}/missing.pt"], "not found"),
        (["--checkpoint", "{tmp}/notes.txt"], "cannot read checkpoint"),
        (["--checkpoint", "{ckpt}", "--data", "synthetic"], "predicts 11 classes"),
        (["--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size"),
        (["--checkpoint", "{ckpt}", "--tta", "scales=x"], "TTA scale"),
        (["--checkpoint", "{ckpt}", "--split", "nope"], "no split"),
        (["--checkpoint", "{ckpt}", "--data", "camvid", "--data-root", "{tmp}/absent"], "does not exist"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.cli import main
    from fcnseg.models import MODELS

    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    root = _camvid(tmp_path / "camvid")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    save_checkpoint({"model": PixelNet(11).state_dict(),
                     "model_config": {"name": "test-pixelnet", "num_classes": 11},
                     "config": {"data": "camvid", "data_root": str(root)}}, tmp_path / "c.pt")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(tmp_path / "c.pt")) for a in argv]
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(err) == 1 and err[0].startswith("fcnseg eval: error:") and message in err[0], err


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(PixelNet())  # unwrapped inside evaluate
        res = evaluate(model, ToyDataset(), precision="fp32", distributed=True, batch_size=2)
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~20 s of imports on a busy 2-core machine
def test_distributed_shards_sum_to_the_single_process_result(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "res.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)  # the test's own result file
    torch.manual_seed(0)
    ref = evaluate(PixelNet(), ToyDataset(), precision="fp32")
    assert got["confusion"] == ref["confusion"]
    assert got["num_images"] == len(SIZES)
