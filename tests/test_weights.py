"""Pretrained weights: the declared table, torchvision-format conversion (fabricated
checkpoints with torchvision's exact keys and shapes), download errors, fcnseg checkpoints."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_to_scale
from torch import nn

from fcnseg import build_model
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.models.backbones import build_backbone
from fcnseg.models.upsample import bilinear_kernel
from fcnseg.weights import WEIGHTS, load_backbone_state, preprocessing


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- torchvision's architectures, written out from torchvision/models/vgg.py and resnet.py
# (torchvision cannot be imported here): the exact state-dict keys and shapes


def torchvision_vgg16_shapes(batch_norm: bool) -> dict[str, tuple[int, ...]]:
    """``make_layers(cfgs["D"], batch_norm)`` + ``classifier`` (Linear, ReLU, Dropout) x3."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    shapes: dict[str, tuple[int, ...]] = {}
    i, c_in = 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        shapes[f"features.{i}.weight"], shapes[f"features.{i}.bias"] = (v, c_in, 3, 3), (v,)
        i += 1
        if batch_norm:
            for n in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"features.{i}.{n}"] = (v,)
            shapes[f"features.{i}.num_batches_tracked"] = ()
            i += 1
        i += 1  # ReLU
        c_in = v
    for j, (o, n) in {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}.items():
        shapes[f"classifier.{j}.weight"], shapes[f"classifier.{j}.bias"] = (o, n), (o,)
    return shapes


def torchvision_resnet_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """``ResNet(block, layers)``: conv1/bn1, layer1..4 of BasicBlock/Bottleneck, fc."""
    block, layers = {
        "resnet18": ("basic", (2, 2, 2, 2)),
        "resnet34": ("basic", (3, 4, 6, 3)),
        "resnet50": ("bottleneck", (3, 4, 6, 3)),
        "resnet101": ("bottleneck", (3, 4, 23, 3)),
    }[name]
    expansion = 1 if block == "basic" else 4
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{n}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), 1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if block == "basic":
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            else:
                convs = [
                    (planes, inplanes, 1, 1),
                    (planes, planes, 3, 3),
                    (planes * 4, planes, 1, 1),
                ]
            for ci, shape in enumerate(convs, 1):
                shapes[f"{p}.conv{ci}.weight"] = shape
                bn(f"{p}.bn{ci}", shape[0])
            stride = 2 if (b == 0 and li > 1) else 1
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512 * expansion), (1000,)
    return shapes


def fabricate(shapes: dict[str, tuple[int, ...]], seed: int = 0, share: dict | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if share and k in share:
            state[k] = share[k]
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(12345)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def vgg16_state():
    return fabricate(torchvision_vgg16_shapes(False), seed=1)


@pytest.fixture(scope="module")
def vgg16_bn_state(vgg16_state):
    # the classifier is the same shape: share it to spare 480 MB
    classifier = {k: v for k, v in vgg16_state.items() if k.startswith("classifier.")}
    state = fabricate(torchvision_vgg16_shapes(True), seed=2, share=classifier)
    # the published vgg16_bn-6c64b313.pth predates num_batches_tracked
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    state = fabricate(torchvision_resnet_shapes("resnet18"), seed=3)
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(state, path)
    return state, path


# --- the expected keys are exactly the backbones' ---------------------------------------


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_vgg_keys_are_torchvision_keys(name):
    tv = torchvision_vgg16_shapes(name == "vgg16_bn")
    with torch.device("meta"):
        ours = {
            k: tuple(v.shape) for k, v in build_backbone(name, with_fc=False).state_dict().items()
        }
    assert ours == {k: v for k, v in tv.items() if k.startswith("features.")}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_resnet_keys_are_torchvision_keys(name):
    tv = torchvision_resnet_shapes(name)
    with torch.device("meta"):
        for output_stride in (32, 8):
            bb = build_backbone(name, output_stride=output_stride)
            ours = {k: tuple(v.shape) for k, v in bb.state_dict().items()}
            assert ours == {k: v for k, v in tv.items() if not k.startswith("fc.")}


# --- conversion with values -------------------------------------------------------------


def empty_backbone(name: str, **kw) -> nn.Module:
    """A backbone with uninitialised storage (loading overwrites every tensor; spares
    initialising fc6/fc7 in every test)."""
    with torch.device("meta"):
        bb = build_backbone(name, **kw)
    return bb.to_empty(device="cpu")


def _assert_vgg_loaded(bb: nn.Module, state: dict) -> None:
    ours = bb.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            if k.endswith("num_batches_tracked"):
                continue
            assert torch.equal(ours[k], v), k
            assert ours[k].data_ptr() != v.data_ptr()  # copied, not aliased
    if getattr(bb, "with_fc", False):
        assert torch.equal(ours["fc6.weight"], state["classifier.0.weight"].view(4096, 512, 7, 7))
        assert torch.equal(ours["fc6.bias"], state["classifier.0.bias"])
        assert torch.equal(ours["fc7.weight"].flatten(1), state["classifier.3.weight"])
        assert torch.equal(ours["fc7.bias"], state["classifier.3.bias"])


def test_vgg16_loads_and_fc6_conv_equals_the_linear(vgg16_state):
    bb = empty_backbone("vgg16").eval()
    load_backbone_state(bb, vgg16_state, source="vgg16.pth")
    _assert_vgg_loaded(bb, vgg16_state)
    # fc6 on a 512x7x7 map equals VGG's Linear on the flattened map. Compared in float64: the
    # conversion is exact, while fp32 sums of 25,088 products differ between AVX2, AVX-512 and
    # AMX kernels by ~1e-3, so the tolerance follows the magnitude of the outputs.
    state = {k: v.double() for k, v in vgg16_state.items() if k.startswith("classifier.")}
    bb = bb.double()
    x = torch.randn(2, 512, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        lin = F.linear(x.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        # the centre of the padded ('same') output, or all of the unpadded ('paper') one
        conv = F.conv2d(x, bb.fc6.weight, bb.fc6.bias)
        assert conv.shape == (2, 4096, 1, 1)
        torch.testing.assert_close(conv.flatten(1), lin, atol=1e-9 * lin.abs().max().item(), rtol=0)
        h = torch.randn(2, 4096, dtype=torch.float64)
        lin7 = F.linear(h, state["classifier.3.weight"], state["classifier.3.bias"])
        fc7 = bb.fc7(h[..., None, None])[..., 0, 0]
        torch.testing.assert_close(fc7, lin7, atol=1e-9 * lin7.abs().max().item(), rtol=0)


def test_vgg16_bn_loads_every_tensor(vgg16_bn_state):
    bb = empty_backbone("vgg16_bn")
    load_backbone_state(bb, vgg16_bn_state, source="vgg16_bn.pth")
    _assert_vgg_loaded(bb, vgg16_bn_state)
    assert torch.equal(bb.features[1].running_var, vgg16_bn_state["features.1.running_var"])


def test_paper_alignment_fc6_is_unpadded():
    with torch.device("meta"):
        assert build_backbone("vgg16", align="paper").fc6.padding == (0, 0)
        assert build_backbone("vgg16", align="same").fc6.padding == (3, 3)


def test_seed_uses_only_the_conv_trunk(vgg16_state):
    bb = empty_backbone("vgg16", with_fc=False)
    load_backbone_state(bb, vgg16_state, source="vgg16.pth")
    _assert_vgg_loaded(bb, vgg16_state)


def test_nan_classifier_is_refused(vgg16_state):
    with torch.device("meta"):
        bb = build_backbone("vgg16")
    bad = dict(vgg16_state)
    bad["classifier.0.weight"] = torch.tensor(float("nan")).expand(4096, 25088)
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        load_backbone_state(bb, bad, source="vgg16_features.pth")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_loads_every_tensor(name):
    state = fabricate(torchvision_resnet_shapes(name), seed=4)
    bb = empty_backbone(name, output_stride=16)
    load_backbone_state(bb, state, source=f"{name}.pth")
    ours = bb.state_dict()
    assert set(state) - set(ours) == {"fc.weight", "fc.bias"}
    for k, v in ours.items():
        assert torch.equal(v, state[k]), k


def test_missing_and_unexpected_keys_are_listed():
    state = fabricate(torchvision_resnet_shapes("resnet18"), seed=5)
    del state["layer2.0.downsample.1.running_mean"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(WeightsError) as e:
        load_backbone_state(build_backbone("resnet18"), state, source="broken.pth")
    msg = str(e.value)
    for word in (
        "broken.pth",
        "layer2.0.downsample.1.running_mean",
        "layer5.0.conv1.weight",
        "layer1.0.conv1.weight",
    ):
        assert word in msg


def test_one_input_channel_sums_rgb_filters(resnet18_file):
    state, path = resnet18_file
    grey = build_model(
        "fcn8s", backbone="resnet18", num_classes=3, in_channels=1, weights=path
    ).eval()
    rgb = build_model("fcn8s", backbone="resnet18", num_classes=3, weights=path).eval()
    torch.testing.assert_close(
        grey.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True)
    )
    with torch.no_grad():
        for m in (grey, rgb):
            nn.init.constant_(m.score_fr.weight, 0.01)
        x = torch.randn(1, 1, 40, 52)
        # the first conv sums its RGB filters before, or the three products after: other sums
        assert_close_to_scale(grey(x), rgb(x.expand(-1, 3, -1, -1)), rel=1e-4)
    four = build_model("fcn32s", backbone="resnet18", num_classes=3, in_channels=4, weights=path)
    w = state["conv1.weight"]
    torch.testing.assert_close(four.backbone.conv1.weight, torch.cat([w, w[:, :1]], 1) * 0.75)


# --- download ---------------------------------------------------------------------------


def _save_hashed(state: dict, directory, stem: str, prefix: str | None = None):
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = directory / f"{stem}-{prefix or digest[:8]}.pth"
    tmp.rename(path)
    return path


def test_imagenet_download_over_http(resnet18_file, tmp_path, monkeypatch):
    state, _ = resnet18_file
    served = tmp_path / "served"
    served.mkdir()
    path = _save_hashed(state, served, "resnet18")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{path.name}"
        monkeypatch.setitem(WEIGHTS["resnet18"]["imagenet"], "url", url)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        model = build_model(
            "fcn32s", backbone="resnet18", num_classes=2, weights="imagenet", progress=False
        )
    finally:
        server.shutdown()
        server.server_close()
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert (tmp_path / "torch" / "hub" / "checkpoints" / path.name).is_file()  # cached


def test_hash_mismatch(tmp_path, monkeypatch):
    path = _save_hashed({"conv1.weight": torch.zeros(1)}, tmp_path, "resnet18", prefix="deadbeef")
    url = path.as_uri()
    monkeypatch.setitem(WEIGHTS["resnet18"]["imagenet"], "url", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as e:
        build_model(
            "fcn32s", backbone="resnet18", num_classes=2, weights="imagenet", progress=False
        )
    msg = str(e.value)
    assert "SHA-256" in msg and url in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / path.name) in msg
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / path.name).exists()


def test_no_network(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    monkeypatch.setitem(WEIGHTS["resnet18"]["imagenet"], "url", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(WeightsError) as e:
        build_model("fcn8s", backbone="resnet18", num_classes=2, weights="imagenet", progress=False)
    msg = str(e.value)
    assert url in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg


# --- fcnseg checkpoints -----------------------------------------------------------------


def _checkpoint(model: nn.Module, path) -> None:
    torch.save({"model": model.state_dict(), "model_config": model.config, "epoch": 3}, path)


@pytest.mark.parametrize(
    ("name", "upsample"), [("fcn8s", "deconv"), ("fcn16s", "unpool"), ("seed", "deconv")]
)
def test_checkpoint_with_other_num_classes_drops_only_the_head(name, upsample, tmp_path):
    src = build_model(name, backbone="resnet18", num_classes=3, upsample=upsample)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # nothing left at its initial value
    path = tmp_path / "ckpt.pt"
    _checkpoint(src, path)
    with pytest.warns(UserWarning, match=r"num_classes 3 -> 5"):
        dst = build_model(name, backbone="resnet18", num_classes=5, upsample=upsample, weights=path)
    fresh = build_model(name, backbone="resnet18", num_classes=5, upsample=upsample).state_dict()
    old = src.state_dict()
    dropped = []
    for k, v in dst.state_dict().items():
        if v.shape == old[k].shape:
            assert torch.equal(v, old[k]), k
        else:
            dropped.append(k)
            if k.startswith("score") or k.endswith(".up.weight"):
                assert torch.equal(v, fresh[k]), k  # zero scores, bilinear deconvs
    assert all(k.startswith(("score", "upscore", "up1")) or ".out." in k for k in dropped), dropped
    assert dropped and not any(k.startswith("backbone.") for k in dropped)
    if name == "fcn8s":
        assert "score_fr.weight" in dropped and "upscore8.up.weight" in dropped
        torch.testing.assert_close(
            dst.upscore8.up.weight.detach(), bilinear_kernel(5, 5, 15)
        )  # ResNet: odd kernel


def test_checkpoint_same_classes_loads_strictly_without_warning(tmp_path):
    src = build_model("fcn8s", backbone="resnet18", num_classes=4, upsample="bilinear").eval()
    with torch.no_grad():
        nn.init.normal_(src.score_fr.weight)
    path = tmp_path / "ckpt.pt"
    _checkpoint(src, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst = build_model(**src.config, weights=path).eval()
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    torch.save(src.state_dict(), tmp_path / "bare.pt")  # a bare model.state_dict() too
    bare = build_model(**src.config, weights=tmp_path / "bare.pt")
    assert torch.equal(bare.score_fr.weight, src.score_fr.weight)


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    src = build_model("fcn8s", backbone="resnet34", num_classes=3)
    _checkpoint(src, tmp_path / "r34.pt")
    with pytest.raises(WeightsError) as e:
        build_model("fcn8s", backbone="resnet18", num_classes=3, weights=tmp_path / "r34.pt")
    msg = str(e.value)
    assert "r34.pt" in msg and "unexpected keys" in msg and "backbone.layer1.2.conv1.weight" in msg
    assert "backbone='resnet34'" in msg


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth"):
        build_model("fcn8s", backbone="resnet18", num_classes=3, weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="coco"):
        build_model("fcn8s", backbone="resnet18", num_classes=3, weights="coco")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        build_model("fcn8s", backbone="resnet18", num_classes=3, weights=tmp_path / "junk.pth")


# --- the table --------------------------------------------------------------------------


def test_weights_table():
    expected = {
        "vgg16": "vgg16-397923af.pth",
        "vgg16_bn": "vgg16_bn-6c64b313.pth",
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
    }
    assert set(WEIGHTS) == set(expected)
    for backbone, file_name in expected.items():
        entry = WEIGHTS[backbone]["imagenet"]
        assert entry["url"] == "https://download.pytorch.org/models/" + file_name
        assert entry["sha256"] == file_name.split("-")[1][:8]
        assert entry["num_categories"] == 1000
        assert preprocessing(backbone, "imagenet") == {
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    assert preprocessing("resnet50", None)["mean"] == (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError, match="vgg19"):
        preprocessing("vgg19", "imagenet")
