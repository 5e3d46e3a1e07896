"""FCN-32s/16s/8s and seed: shapes at odd sizes, initialisation, alignment, configuration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_to_scale
from torch import nn

from fcnseg import build_model, list_models
from fcnseg.errors import ConfigError
from fcnseg.models.backbones import BACKBONES, build_backbone
from fcnseg.models.upsample import UPSAMPLE_MODES, bilinear_kernel, deconv, interpolate, unpool

MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn4s", "seed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the box is shared: two threads fighting other jobs are slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_SHARED: dict[tuple[int, ...], torch.Tensor] = {}


def quick_model(name: str, **kw) -> nn.Module:
    """``build_model`` on the meta device, then materialised on CPU with cheap values:
    the real modules and forward code without the cost of initialising (and paging in)
    fc6/fc7 for every build — their big weights are shared between the models of the
    sweep. Only for tests about shapes; initialisation is tested on real builds."""
    with torch.device("meta"):
        model = build_model(name, **kw)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            for pname, p in list(module.named_parameters(recurse=False)):
                if p.numel() >= 1 << 22:
                    shared = _SHARED.setdefault(tuple(p.shape), torch.full(p.shape, 1e-4))
                    setattr(module, pname, nn.Parameter(shared, requires_grad=False))
                else:
                    p.fill_(0.01)
        for n, b in model.named_buffers():
            b.fill_(1) if n.endswith("running_var") else b.zero_()
    return model


def test_registry():
    assert list_models() == ["fcn16s", "fcn32s", "fcn4s", "fcn8s", "seed"]


SWEEP = list(itertools.product(MODELS, BACKBONES, UPSAMPLE_MODES))


@pytest.mark.parametrize(("name", "backbone", "upsample"), SWEEP)
def test_output_size_odd_input(name, backbone, upsample):
    # train mode everywhere; eval mode too for resnet18 (the other backbones run the same
    # head code; VGG eval forwards are in the tests below), all of it in the slow sweep
    model = quick_model(name, backbone=backbone, num_classes=3, upsample=upsample)
    x = torch.randn(1, 3, 33, 45)
    modes = (True, False) if backbone == "resnet18" else (True,)
    with torch.no_grad():
        for train in modes:
            y = model.train(train)(x)
            assert y.shape == (1, 3, 33, 45)
            assert torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "backbone", "upsample"), SWEEP)
def test_output_size_all_sizes_and_modes(name, backbone, upsample):
    model = quick_model(name, backbone=backbone, num_classes=2, upsample=upsample)
    with torch.no_grad():
        for (h, w), train in itertools.product(((33, 45), (97, 131), (500, 375)), (True, False)):
            assert model.train(train)(torch.randn(1, 3, h, w)).shape == (1, 2, h, w)


@pytest.mark.parametrize(
    ("name", "backbone", "upsample", "size"),
    [
        ("fcn8s", "resnet18", "deconv", (500, 375)),
        ("fcn16s", "resnet18", "unpool", (97, 131)),
        ("seed", "resnet18", "bilinear", (500, 375)),
        ("fcn8s", "vgg16", "unpool", (97, 131)),
        ("fcn32s", "vgg16_bn", "bilinear", (97, 131)),
        ("seed", "vgg16", "deconv", (97, 131)),
        ("seed", "vgg16", "unpool", (97, 131)),
    ],
)
def test_output_size_larger_odd_inputs(name, backbone, upsample, size):
    model = quick_model(name, backbone=backbone, num_classes=2, upsample=upsample).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 2, *size)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["fcn8s", "fcn4s", "seed"])
@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
def test_dilated_resnet(name, upsample, output_stride):
    model = quick_model(
        name, backbone="resnet18", num_classes=2, upsample=upsample, output_stride=output_stride
    )
    x = torch.randn(1, 3, 65, 47)
    with torch.no_grad():
        feats = model.backbone(x)
        assert model.train()(x).shape == (1, 2, 65, 47)
    for key in ("pool3", "pool4", "pool5"):
        s = model.backbone.strides[key]
        assert feats[key].shape[-2:] == (-(-65 // s), -(-47 // s)), key
    assert model.backbone.strides["pool5"] == output_stride


def test_dilation_follows_torchvision():
    # replace_stride_with_dilation=[False, True, True]: the first block of a dilated layer
    # keeps the previous dilation, the others get the new one; the keys do not change
    bb = build_backbone("resnet50", output_stride=8)
    assert bb.layer3[0].conv2.dilation == (1, 1) and bb.layer3[0].conv2.stride == (1, 1)
    assert bb.layer3[1].conv2.dilation == (2, 2) and bb.layer3[1].conv2.padding == (2, 2)
    assert bb.layer4[0].conv2.dilation == (2, 2) and bb.layer4[2].conv2.dilation == (4, 4)
    assert bb.layer3[0].downsample[0].stride == (1, 1)
    assert bb.state_dict().keys() == build_backbone("resnet50").state_dict().keys()


# --- paper (Caffe) alignment -----------------------------------------------------------


def _origin_chain(layers, origin=0.0, stride=1.0):
    """Centre of pixel 0 (input pixels) and the stride after a chain of layers:
    ("conv", k, s, pad) or ("deconv", k, f) — the arithmetic of Caffe's coord maps."""
    for layer in layers:
        if layer[0] == "conv":
            _, k, s, p = layer
            origin, stride = origin + stride * ((k - 1) / 2 - p), stride * s
        else:
            _, k, f = layer
            origin, stride = origin - stride * (k - 1) / (2 * f), stride / f
    return origin, stride


def test_paper_crop_offsets_follow_from_the_geometry():
    from fcnseg.models.fcn import PAPER_CROPS

    block = lambda n: [("conv", 3, 1, 1)] * n + [("conv", 2, 2, 0)]  # noqa: E731
    trunk = [("conv", 3, 1, 100), ("conv", 3, 1, 1), ("conv", 2, 2, 0)]
    pool3 = trunk + block(2) + block(3)
    pool4 = pool3 + block(3)
    fc6 = pool4 + block(3) + [("conv", 7, 1, 0)]
    o3, _ = _origin_chain(pool3)
    o4, _ = _origin_chain(pool4)
    up2 = fc6 + [("deconv", 4, 2)]
    crop4 = (_origin_chain(up2)[0] - o4) / 16
    crop3 = (_origin_chain(up2 + [("deconv", 4, 2)])[0] - o3) / 8
    final8 = -_origin_chain(up2 + [("deconv", 4, 2), ("deconv", 16, 8)])[0]
    final16 = -_origin_chain(up2 + [("deconv", 32, 16)])[0]
    final32 = -_origin_chain(fc6 + [("deconv", 64, 32)])[0]
    assert (crop4, crop3, final8) == (5, 9, 31)  # voc-fcn8s/net.py
    assert (final16, final32) == (27, 19)  # voc-fcn16s, voc-fcn32s
    assert PAPER_CROPS == {"fcn8s": (5, 9, 31), "fcn16s": (5, 0, 27), "fcn32s": (0, 0, 19)}


def test_paper_fcn8s_caffe_shapes_500x500():
    # the sizes of the authors' voc-fcn8s blobs for a 500x500 image
    with torch.device("meta"):
        model = build_model("fcn8s", num_classes=21, align="paper").eval()
        shapes = {}
        for n in (
            "score_fr",
            "upscore2",
            "score_pool4",
            "upscore_pool4",
            "score_pool3",
            "upscore8",
        ):
            getattr(model, n).register_forward_hook(
                lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:]))
            )
        y = model(torch.empty(1, 3, 500, 500))
    assert model.backbone.features[0].padding == (100, 100)
    assert all(m.ceil_mode for m in model.backbone.features if isinstance(m, nn.MaxPool2d))
    assert shapes == {
        "score_fr": (16, 16),
        "upscore2": (34, 34),
        "score_pool4": (44, 44),
        "upscore_pool4": (70, 70),
        "score_pool3": (88, 88),
        "upscore8": (568, 568),
    }
    assert y.shape == (1, 21, 500, 500)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
def test_paper_output_size(name, upsample):
    with torch.device("meta"):
        model = build_model(name, num_classes=3, upsample=upsample, align="paper")
        for h, w in ((32, 32), (97, 131), (500, 375)):
            assert model(torch.empty(1, 3, h, w)).shape == (1, 3, h, w)


def test_paper_fcn8s_unpool_runs():
    # the switches must fit the padded frames (deconv/bilinear: shapes above, and the
    # caffe deconv/interpolation pair is tested below)
    model = quick_model("fcn8s", num_classes=3, upsample="unpool", align="paper")
    with torch.no_grad():
        y = model.train()(torch.randn(1, 3, 33, 45))
    assert y.shape == (1, 3, 33, 45) and torch.isfinite(y).all()


# --- upsampling ------------------------------------------------------------------------


def _reference_upsample(x: torch.Tensor, factor: int, positions) -> torch.Tensor:
    """Separable linear interpolation of ``x`` (N, C, h, w) at source coordinates
    ``positions(n_out) -> array``, clamped at the border (computed with numpy)."""
    a = x.double().numpy()
    h, w = a.shape[-2:]
    ph, pw = positions(h * factor), positions(w * factor)

    def along(arr, pos, axis):
        n = arr.shape[axis]
        moved = np.moveaxis(arr, axis, -1)
        out = np.apply_along_axis(lambda v: np.interp(pos, np.arange(n), v), -1, moved)
        return np.moveaxis(out, -1, axis)

    return torch.from_numpy(along(along(a, ph, 2), pw, 3))


@pytest.mark.parametrize("factor", [2, 8, 32])
@pytest.mark.parametrize("geometry", ["cell", "corner"])
def test_bilinear_deconv_equals_interpolation_away_from_border(factor, geometry):
    x = torch.randn(2, 3, 6, 5)
    if geometry == "cell":  # output j <- source (j + 0.5) / f - 0.5 (align_corners=False)
        positions = lambda n: (np.arange(n) + 0.5) / factor - 0.5  # noqa: E731
    else:  # output j <- source j / f
        positions = lambda n: np.arange(n) / factor  # noqa: E731
    ref = _reference_upsample(x, factor, positions).float()
    with torch.no_grad():
        up = deconv(3, factor, geometry)(x)
    fixed = interpolate(x, factor, geometry)
    assert up.shape == fixed.shape == (2, 3, 6 * factor, 5 * factor)
    b = factor  # the deconvolution sees zero padding within one source pixel of the border
    assert_close_to_scale(up[..., b:-b, b:-b], ref[..., b:-b, b:-b], rel=1e-5)
    assert_close_to_scale(fixed, ref, rel=1e-5)  # clamped border included


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_caffe_deconv_and_its_bilinear_twin(factor):
    x = torch.randn(1, 2, 5, 4)
    with torch.no_grad():
        up = deconv(2, factor, "caffe")(x)
    fixed = interpolate(x, factor, "caffe")
    assert up.shape == fixed.shape == (1, 2, 6 * factor, 5 * factor)
    b = factor + factor // 2
    assert_close_to_scale(up[..., b:-b, b:-b], fixed[..., b:-b, b:-b], rel=1e-5)


def test_bilinear_kernel_matches_the_authors_formula():
    # surgery.upsample_filt(4): [0.25, 0.75, 0.75, 0.25] outer itself, channel-diagonal
    k = bilinear_kernel(3, 3, 4)
    f = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(k[1, 1], f[:, None] * f[None, :])
    assert k[0, 1].abs().sum() == 0
    f3 = torch.tensor([0.5, 1.0, 0.5])
    torch.testing.assert_close(bilinear_kernel(1, 1, 3)[0, 0], f3[:, None] * f3[None, :])


def test_unpool_puts_values_back_at_the_switches():
    x = torch.randn(2, 4, 9, 7)
    pooled, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    y = unpool(pooled, idx, x.shape[-2:])
    assert y.shape == x.shape
    nz = y != 0
    assert nz.sum() == pooled.numel()  # one per window
    torch.testing.assert_close(y[nz], x[nz])


def test_bilinear_mode_has_no_upsampling_parameters():
    model = quick_model("fcn8s", backbone="resnet18", num_classes=4, upsample="bilinear")
    names = [n for n, _ in model.named_parameters() if not n.startswith("backbone.")]
    assert sorted(names) == sorted(
        f"{layer}.{p}"
        for layer in ("score_fr", "score_pool4", "score_pool3")
        for p in ("weight", "bias")
    )


# --- initialisation (real builds) ------------------------------------------------------


@pytest.fixture(scope="module")
def fcn8s_vgg16():
    return build_model("fcn8s", backbone="vgg16", num_classes=21).eval()


def test_fcn8s_vgg16_parameter_count(fcn8s_vgg16):
    n = sum(p.numel() for p in fcn8s_vgg16.parameters())
    assert n == 134_489_759  # the paper: 134.5 M


def test_fcn8s_layers_and_init(fcn8s_vgg16):
    m = fcn8s_vgg16
    assert m.backbone.fc6.weight.shape == (4096, 512, 7, 7) and m.backbone.fc6.padding == (3, 3)
    assert m.backbone.fc7.weight.shape == (4096, 4096, 1, 1)
    assert isinstance(m.backbone.drop6, nn.Dropout2d) and isinstance(m.backbone.drop7, nn.Dropout2d)
    for layer in (m.score_fr, m.score_pool4, m.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    for layer, size in ((m.upscore2, 4), (m.upscore_pool4, 4), (m.upscore8, 16)):
        torch.testing.assert_close(layer.up.weight.detach(), bilinear_kernel(21, 21, size))
        assert layer.up.weight.requires_grad
    assert m.config == dict(
        name="fcn8s",
        backbone="vgg16",
        num_classes=21,
        in_channels=3,
        upsample="deconv",
        align="same",
        output_stride=32,
    )


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18"])
def test_zero_initialised_skips_leave_fcn8s_a_pure_upsampling_of_score_fr(backbone, fcn8s_vgg16):
    m = (
        fcn8s_vgg16
        if backbone == "vgg16"
        else build_model("fcn8s", backbone=backbone, num_classes=21)
    )
    m.eval()
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        nn.init.normal_(m.score_fr.weight, std=0.1)
        nn.init.normal_(m.score_fr.bias)
        f = m.backbone(x)
        s = m.score_fr(f["out"])
        s = m.upscore2(s, f)[..., : f["pool4"].shape[-2], : f["pool4"].shape[-1]]
        s = m.upscore_pool4(s, f)[..., : f["pool3"].shape[-2], : f["pool3"].shape[-1]]
        expected = m.upscore8(s, f)[..., :45, :67]
        y = m(x)
        torch.testing.assert_close(y, expected)
        assert y.abs().max() > 0
        nn.init.normal_(m.score_pool4.weight)  # the skip does reach the output
        assert not torch.allclose(m(x), y)
        nn.init.zeros_(m.score_pool4.weight)
        nn.init.zeros_(m.score_fr.weight)
        nn.init.zeros_(m.score_fr.bias)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18"])
@pytest.mark.parametrize(
    ("variant", "parent", "layer", "key", "hw"),
    [("fcn4s", "fcn8s", "score_pool2", "pool2", (12, 17))],
)
def test_finer_fcn_adds_one_skip_to_its_parent(backbone, variant, parent, layer, key, hw):
    # the parent's layers plus one score layer on the next finer map (parent weights load one to one)
    torch.manual_seed(0)
    m = build_model(variant, backbone=backbone, num_classes=3, upsample="bilinear").eval()
    mp = build_model(parent, backbone=backbone, num_classes=3, upsample="bilinear").eval()
    with torch.no_grad():
        for name, p in mp.named_parameters():
            if name.startswith("score_") and name.endswith(".weight"):
                nn.init.normal_(p, std=0.1)
    missing, unexpected = m.load_state_dict(mp.state_dict(), strict=False)
    assert sorted(missing) == [f"{layer}.bias", f"{layer}.weight"] and not unexpected
    new = getattr(m, layer)
    assert new.weight.abs().sum() == 0  # zero-initialised like the paper's skips
    assert new.in_channels == {"vgg16": 128, "resnet18": 64}[backbone]
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        assert m.backbone(x)[key].shape[-2:] == hw
        y, yp = m(x), mp(x)
        assert y.shape == yp.shape == (1, 3, 45, 67)
        if backbone == "resnet18":
            # corner-aligned bilinear x2 then the rest is the parent's single interpolation:
            # with the new skip at zero, the finer net is exactly its parent
            assert_close_to_scale(y, yp, rel=1e-5)  # one interpolation or two: different sums
        nn.init.normal_(new.weight, std=0.1)  # the new skip reaches the output
        assert (m(x) - y).abs().max() > 1e-3
    with pytest.raises(ConfigError, match=f"{variant} has no Caffe geometry"):
        build_model(variant, num_classes=3, align="paper")


def test_removed_models_name_what_replaces_them():
    """fcn2s, fpn, resnet10 and the pyramid pooling context were removed (no gain measured):
    asking for one, or rebuilding a checkpoint that used one, says so and names the fix."""
    for kw, words in (
        (dict(name="fcn2s"), ["'fcn2s' was removed", "fcn4s"]),
        (dict(name="fpn"), ["'fpn' was removed", "fcn4s"]),
        (dict(name="fcn8s", backbone="resnet10"), ["'resnet10' was removed", "resnet18"]),
        (dict(name="fcn8s", backbone="resnet18", context="ppm"), ["context='ppm' was removed"]),
    ):
        with pytest.raises(ConfigError) as e:
            build_model(num_classes=3, **kw)
        assert all(w in str(e.value) for w in words), str(e.value)


def test_vgg_trunk_is_shared_and_seed_has_no_fc():
    from fcnseg.models.backbones.vgg import VGG

    with torch.device("meta"):
        models = [build_model(n, num_classes=2) for n in MODELS]
    assert all(type(m.backbone) is VGG for m in models)
    seed = models[-1]
    assert not hasattr(seed.backbone, "fc6")
    assert all(k.startswith(("backbone.features.", "up", "conv")) for k in seed.state_dict())


def test_seed_follows_the_tutorial():
    with torch.device("meta"):
        m = build_model("seed", num_classes=3)
    assert isinstance(m.up5.conv, nn.ConvTranspose2d)
    for layer, c_in, c_out in (
        (m.up5, 512, 512),
        (m.up4, 512, 512),
        (m.up3, 512, 256),
        (m.up2, 256, 128),
        (m.up1, 128, 3),
    ):
        conv = layer.conv
        assert (conv.in_channels, conv.out_channels) == (c_in, c_out)
        assert (conv.kernel_size, conv.stride, conv.padding, conv.output_padding) == (
            (3, 3),
            (2, 2),
            (1, 1),
            (1, 1),
        )
    assert (m.conv5.out_channels, m.conv3.out_channels, m.conv2.out_channels) == (512, 256, 128)
    x = torch.randn(1, 3, 64, 64)
    model = quick_model("seed", num_classes=3).eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3, 64, 64)


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(name="fcn8s", backbone="resnet50", num_classes=3, upsample="unpool", output_stride=8),
        dict(name="seed", backbone="vgg16_bn", num_classes=5, in_channels=1, upsample="bilinear"),
        dict(name="fcn16s", backbone="vgg16", num_classes=2, align="paper"),
    ],
)
def test_config_rebuilds_the_model(kw):
    with torch.device("meta"):
        model = build_model(**kw)
        again = build_model(**model.config)
    assert (
        model.config
        == again.config
        == {**dict(in_channels=3, upsample="deconv", align="same", output_stride=32), **kw}
    )
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in again.state_dict().items()
    }


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(name="fcn8s", backbone="resnet50", align="paper"), ["paper", "resnet50"]),
        (dict(name="fcn8s", backbone="vgg16", output_stride=8), ["output_stride=8", "vgg16"]),
        (dict(name="fcn8s", backbone="vgg19"), ["vgg19", "resnet50"]),
        (dict(name="fcn8s", upsample="nearest"), ["nearest", "unpool"]),
        (dict(name="fcn8s", align="center"), ["center", "paper"]),
        (dict(name="fcn8s", output_stride=4), ["output_stride", "4"]),
        (dict(name="seed", align="paper"), ["seed", "paper"]),
        (dict(name="fcn4s", align="paper"), ["fcn4s", "Caffe"]),
        (dict(name="fcn64s"), ["fcn64s", "fcn32s", "fcn4s"]),
        (dict(name="fcn8s", num_classes=0), ["num_classes", "0"]),
        (dict(name="fcn8s", in_channels=0), ["in_channels"]),
    ],
)
def test_conflicting_or_unknown_arguments_raise_config_error(kw, words):
    kw = {"num_classes": 3, **kw}
    with torch.device("meta"), pytest.raises(ConfigError) as e:
        build_model(**kw)
    for word in words:
        assert word in str(e.value)


def test_unknown_keyword_is_not_swallowed():
    with pytest.raises(TypeError):
        build_model("fcn8s", num_classes=3, pretrained=True)


def test_in_channels_and_channels_last():
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, in_channels=1).eval()
    x = torch.randn(2, 1, 41, 37)
    with torch.no_grad():
        nn.init.normal_(model.score_fr.weight)
        y = model(x)
        y_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.shape == (2, 3, 41, 37)
    assert_close_to_scale(y_cl, y, rel=1e-4)  # other kernels, other summation order


def test_replicate_pad_equals_torch_pad():
    from fcnseg.models.upsample import _replicate_pad

    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(_replicate_pad(x, 0, 1), F.pad(x, (0, 1, 0, 1), mode="replicate"))
    assert torch.equal(_replicate_pad(x, 1, 1), F.pad(x, (1, 1, 1, 1), mode="replicate"))


@pytest.mark.slow
def test_compiled_bilinear_fcn_trains_and_matches_eager():
    m = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear")
    x = torch.randn(2, 3, 64, 64)
    y = torch.compile(m)(x)
    y.float().mean().backward()
    assert_close_to_scale(y, m(x), rel=1e-4)


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet50", 16)])
def test_zero_init_residual_makes_every_block_the_identity_branch(name, blocks):
    from fcnseg.models.backbones.resnet import BasicBlock, Bottleneck, zero_init_residual

    torch.manual_seed(0)
    net = build_backbone(name).eval()
    assert zero_init_residual(net) == blocks
    x = torch.randn(2, 64 * (4 if name == "resnet50" else 1), 8, 8)
    block = next(m for m in net.modules() if isinstance(m, BasicBlock | Bottleneck) and m.downsample is None)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))  # the residual branch adds exactly 0
        y = net(torch.randn(1, 3, 64, 64))["out"]
    assert y.abs().sum() > 0  # the downsampling shortcuts still carry the signal
