"""Prediction: outputs at the inputs' sizes, palette PNGs, probabilities, failures, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.checkpoint import save_checkpoint
from fcnseg.cli import main
from fcnseg.data.transforms import eval_transforms
from fcnseg.errors import ConfigError, DataError
from fcnseg.inference.predict import PredictFailures, predict, resolve_inputs
from fcnseg.models import MODELS

K = 3
PALETTE = np.array([[10, 20, 30], [200, 0, 0], [0, 200, 0]], np.uint8)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


class PixelNet(nn.Module):
    """A 1x1 convolution with a random bias spread, so all classes appear."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.config = {"name": "test-pixelnet", "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def ckpt_path(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "test-pixelnet", lambda *, num_classes, **_: PixelNet(num_classes))
    model = PixelNet()
    with torch.no_grad():
        model.conv.weight.copy_(torch.randn(K, 3, 1, 1) * 2)
    path = tmp_path / "model.pt"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": ["cat", "dog", "background"],
            "palette": PALETTE,
            "mean": MEAN,
            "std": STD,
            "config": {},
        },
        path,
    )
    return path


@pytest.fixture
def images(tmp_path):
    """Odd-sized RGB, grayscale, RGBA and a JPEG, in a folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (29, 41), np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 31, 4), np.uint8), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), np.uint8)).save(folder / "photo.jpg")
    return folder


def _expected(ckpt_path, path) -> np.ndarray:
    """The prediction by hand: checkpoint model on the image normalised with its mean/std."""
    ckpt = torch.load(ckpt_path, weights_only=True)  # fcnseg writes plain data
    model = PixelNet()
    model.load_state_dict(ckpt["model"])
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x, _ = eval_transforms(mean=MEAN, std=STD)(rgb, np.zeros(rgb.shape[:2], np.uint8))
    with torch.no_grad():
        return model(x[None])[0].argmax(0).numpy()


def test_outputs_at_input_sizes_with_palette_and_probs(ckpt_path, images, tmp_path):
    out = tmp_path / "out"
    written = predict(ckpt_path, [images], out, save_probs=True, precision="fp32", batch_size=4)
    assert len(written) == 4 * 3
    seen = set()
    for src in sorted(images.iterdir()):
        w, h = Image.open(src).size
        png = Image.open(out / f"{src.stem}.png")
        assert png.mode == "P" and png.size == (w, h)
        pred = np.asarray(png)
        assert pred.min() >= 0 and pred.max() < K
        seen |= set(np.unique(pred).tolist())
        assert np.array_equal(np.asarray(png.getpalette()[: 3 * K]).reshape(K, 3), PALETTE)
        np.testing.assert_array_equal(pred, _expected(ckpt_path, src))
        ov = Image.open(out / f"{src.stem}_overlay.jpg")
        assert ov.mode == "RGB" and ov.size[0] == w and ov.size[1] > h  # image + legend strip
        probs = np.load(out / f"{src.stem}_probs.npy")
        assert probs.dtype == np.float16 and probs.shape == (K, h, w)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
        np.testing.assert_array_equal(probs.argmax(0), pred)
    assert seen == {0, 1, 2}


def test_batch_size_does_not_change_predictions(ckpt_path, images, tmp_path):
    predict(ckpt_path, [images], tmp_path / "b1", batch_size=1, precision="fp32")
    predict(ckpt_path, [str(images / "*.png"), images / "photo.jpg"], tmp_path / "b3", batch_size=3, precision="fp32")
    for src in images.iterdir():
        a = np.asarray(Image.open(tmp_path / "b1" / f"{src.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "b3" / f"{src.stem}.png"))
        np.testing.assert_array_equal(a, b)


def test_overlay_opacity(ckpt_path, tmp_path):
    yy, xx = np.mgrid[0:37, 0:53]
    smooth = np.stack([xx * 4, yy * 6, 255 - xx * 4], -1).astype(np.uint8)  # JPEG-friendly
    Image.fromarray(smooth).save(tmp_path / "smooth.png")
    for alpha in (0.0, 1.0):
        predict(ckpt_path, [tmp_path / "smooth.png"], tmp_path / f"o{alpha}", alpha=alpha, precision="fp32")
    pred = np.asarray(Image.open(tmp_path / "o0.0" / "smooth.png"))
    ov0 = np.asarray(Image.open(tmp_path / "o0.0" / "smooth_overlay.jpg")).astype(int)[:37]
    ov1 = np.asarray(Image.open(tmp_path / "o1.0" / "smooth_overlay.jpg")).astype(int)[:37]
    assert np.abs(ov0 - smooth).mean() < 3  # the image itself, up to JPEG noise
    assert np.abs(ov1 - PALETTE[pred].astype(int)).mean() < 6  # the class colours


def test_input_resolution(images, tmp_path):
    assert [p.name for p in resolve_inputs([images])] == ["gray.png", "photo.jpg", "rgb.png", "rgba.png"]
    assert [p.name for p in resolve_inputs([str(images / "r*.png"), images / "rgb.png"])] == ["rgb.png", "rgba.png"]
    with pytest.raises(ConfigError, match="no image files match"):
        resolve_inputs([str(images / "*.tif")])
    with pytest.raises(DataError, match="nope.png"):
        resolve_inputs([images / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        resolve_inputs([tmp_path / "empty"])


def test_unreadable_image_is_reported_and_the_rest_written(ckpt_path, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(PredictFailures) as info:
        predict(ckpt_path, [images], tmp_path / "out", precision="fp32")
    assert [p.name for p, _ in info.value.failures] == ["broken.png"]
    assert "broken.png" in info.value.failures[0][1]
    assert len(info.value.written) == 4 * 2
    assert (tmp_path / "out" / "rgba.png").is_file() and not (tmp_path / "out" / "broken.png").exists()
    # the CLI lists the failure and exits with 1
    code = main(["predict", "--checkpoint", str(ckpt_path), str(images), "--out", str(tmp_path / "o2")])
    assert code == 1


def test_cli_predict(ckpt_path, images, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["predict", "--checkpoint", str(ckpt_path), str(images / "rgb.png"), str(images / "gray.png"),
                 "--out", str(out), "--probs", "--alpha", "0.3", "--precision", "fp32", "--tta", "flip"])
    assert code == 0
    assert "segmented 2 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "gray.png", "gray_overlay.jpg", "gray_probs.npy", "rgb.png", "rgb_overlay.jpg", "rgb_probs.npy"
    ]


def test_cli_predict_with_crf_writes_the_refined_probabilities(ckpt_path, images, tmp_path):
    from fcnseg.inference.crf import CRF, crf_refine
    from fcnseg.inference.segment import segment

    out = tmp_path / "crf"
    assert main(["predict", "--checkpoint", str(ckpt_path), str(images / "rgb.png"), "--out", str(out),
                 "--probs", "--precision", "fp32", "--crf", "appearance=4,theta_a=3,theta_b=80,radius=2,dilation=1"]) == 0
    ckpt = torch.load(ckpt_path, weights_only=True)  # fcnseg writes plain data
    model = PixelNet()
    model.load_state_dict(ckpt["model"])
    rgb = np.array(Image.open(images / "rgb.png").convert("RGB"))
    x, _ = eval_transforms(mean=MEAN, std=STD)(rgb, np.zeros(rgb.shape[:2], np.uint8))
    plain = segment(model.eval(), [x], precision="fp32", probs=True)[0]
    want = crf_refine(plain, torch.from_numpy(rgb), CRF(appearance=4, theta_a=3, theta_b=80, radius=2, dilation=1))
    got = np.load(out / "rgb_probs.npy").astype(np.float32)
    np.testing.assert_allclose(got, want.numpy(), atol=2e-3)
    assert (got.argmax(0) != plain.argmax(0).numpy()).sum() > 0  # the CRF changed some pixels
    np.testing.assert_array_equal(np.array(Image.open(out / "rgb.png")), got.argmax(0))


def test_predict_applies_the_checkpoints_saved_tta_unless_told_otherwise(ckpt_path, images, tmp_path):
    ckpt = torch.load(ckpt_path, weights_only=True)  # fcnseg writes plain data
    ckpt["config"] = {"eval_tta": "flip,scales=0.5,1"}  # as `fcnseg train --eval-tta` saves it
    probs = {}
    for name, tta in (("auto", "auto"), ("off", None), ("given", "flip,scales=0.5,1")):
        predict(ckpt, [images / "rgb.png"], tmp_path / name, save_probs=True, precision="fp32", tta=tta)
        probs[name] = np.load(tmp_path / name / "rgb_probs.npy").astype(np.float32)
    np.testing.assert_array_equal(probs["auto"], probs["given"])
    assert np.abs(probs["auto"] - probs["off"]).max() > 0.01  # the half scale blurs the 1x1 net's map


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "{tmp}/missing.pt", "{img}"], "not found"),
        (["--checkpoint", "{tmp}/notes.txt", "{img}"], "cannot read checkpoint"),
        (["--checkpoint", "{ckpt}", "{tmp}/in/*.gif"], "no image files match"),
        (["--checkpoint", "{ckpt}", "{img}", "--alpha", "1.5"], "alpha"),
        (["--checkpoint", "{ckpt}", "{img}", "--batch-size", "0"], "batch_size"),
        (["--checkpoint", "{ckpt}", "{img}", "--tta", "flop"], "TTA"),
        (["--checkpoint", "{ckpt}", "{img}", "--sliding-window", "0"], "sliding window"),
        (["--checkpoint", "{ckpt}", "{img}", "--crf", "radius=0"], "radius and dilation >= 1"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, ckpt_path, images, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    sub = {"{tmp}": str(tmp_path), "{img}": str(images / "rgb.png"), "{ckpt}": str(ckpt_path)}
    for k, v in sub.items():
        argv = [a.replace(k, v) for a in argv]
    code = main(["predict", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fcnseg predict: error:") and message in err[0]
