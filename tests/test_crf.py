"""The local dense CRF (fcnseg.inference.crf): against a brute-force dense CRF on the same
window, what its two kernels do to a prediction, its spec, and its use by eval/predict."""

import pytest
import torch

from fcnseg.errors import ConfigError
from fcnseg.inference.crf import CRF, crf_refine, parse_crf


def _brute_force(probs: torch.Tensor, image: torch.Tensor, crf: CRF) -> torch.Tensor:
    """Mean-field with an explicit N x N kernel matrix: every pixel pair whose offset is a
    window offset (dilation steps, |dy|, |dx| <= radius * dilation), normalised k / sqrt(n_i n_j)."""
    k_cls, h, w = probs.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1).double()
    col = image.reshape(3, -1).t().double()
    dy = pos[:, None, 0] - pos[None, :, 0]
    dx = pos[:, None, 1] - pos[None, :, 1]
    d2 = dy**2 + dx**2
    reach = crf.radius * crf.dilation
    window = (dy.abs() <= reach) & (dx.abs() <= reach) & (dy % crf.dilation == 0) & (dx % crf.dilation == 0) & (d2 > 0)
    ka = torch.exp(-d2 / (2 * crf.theta_a**2) - ((col[:, None] - col[None]) ** 2).sum(-1) / (2 * crf.theta_b**2)) * window
    ks = torch.exp(-d2 / (2 * crf.theta_s**2)) * window
    na, ns = ka.sum(1), ks.sum(1)
    kern = crf.appearance * ka / (na[:, None] * na[None]).sqrt() + crf.smoothness * ks / (ns[:, None] * ns[None]).sqrt()
    unary = probs.double().reshape(k_cls, -1).clamp_min(1e-8).log()
    q = probs.double().reshape(k_cls, -1)
    for _ in range(crf.iterations):
        q = (unary + q @ kern.t()).softmax(0)
    return q.reshape(k_cls, h, w).float()


@pytest.mark.parametrize(
    "crf",
    [
        CRF(iterations=3, appearance=2.0, theta_a=3.0, theta_b=20.0, smoothness=1.0, theta_s=1.0, radius=2, dilation=1),
        CRF(iterations=4, appearance=3.0, theta_a=5.0, theta_b=40.0, smoothness=0.0, radius=2, dilation=2),
        CRF(iterations=2, appearance=1.0, theta_a=2.0, theta_b=30.0, smoothness=2.0, theta_s=2.0, radius=3, dilation=1),
    ],
)
@pytest.mark.parametrize("loop", ["compiled", "torch"])
def test_matches_a_brute_force_dense_crf_on_the_window(crf, loop, monkeypatch):
    """Both message loops: the compiled one (numba, the CPU default) and torch's (GPUs, no numba)."""
    import fcnseg.inference.crf as crf_module

    if loop == "torch":
        monkeypatch.setattr(crf_module, "_kernel", lambda: None)
    else:
        assert crf_module._kernel() is not None, "numba is a dependency: the compiled loop must be there"
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 9, 11, generator=g).softmax(0)
    image = torch.randint(0, 256, (3, 9, 11), generator=g).float()
    got = crf_refine(probs, image, crf)
    want = _brute_force(probs, image, crf)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(got.sum(0), torch.ones(9, 11), atol=1e-5)
    # (H, W, 3) uint8 colours are the same image
    hwc = image.permute(1, 2, 0).to(torch.uint8)
    assert torch.allclose(crf_refine(probs, hwc, crf), got, atol=1e-6)


def test_zero_iterations_keeps_the_probabilities():
    probs = torch.rand(3, 5, 6).softmax(0)
    assert torch.equal(crf_refine(probs, torch.zeros(3, 5, 6), CRF(iterations=0)), probs)


def test_removes_an_isolated_wrong_pixel_on_a_flat_image():
    probs = torch.zeros(2, 20, 20)
    probs[0] = 0.8
    probs[1] = 0.2
    probs[:, 10, 10] = torch.tensor([0.4, 0.6])  # one pixel wrongly, weakly class 1
    flat = torch.full((3, 20, 20), 128.0)
    out = crf_refine(probs, flat, CRF(appearance=2.0, smoothness=0.0, radius=3, dilation=1))
    assert probs.argmax(0)[10, 10] == 1 and out.argmax(0)[10, 10] == 0
    assert (out.argmax(0) == 0).all()
    assert out[0, 10, 10] > 0.6  # pulled well past the unary's 0.4


def test_appearance_kernel_stops_at_colour_edges():
    """Class 0 is confident on the dark left half, class 1 weakly ahead on the bright right
    half. A colour-blind kernel (huge theta_b) lets the left half win next to the boundary; the
    appearance kernel keeps the boundary where the colours change."""
    h, w = 12, 24
    probs = torch.empty(2, h, w)
    probs[:, :, :12] = torch.tensor([0.95, 0.05])[:, None, None]
    probs[:, :, 12:] = torch.tensor([0.45, 0.55])[:, None, None]
    image = torch.zeros(3, h, w)
    image[:, :, 12:] = 255.0
    edge = CRF(appearance=3.0, theta_a=4.0, theta_b=10.0, smoothness=0.0, radius=4, dilation=1)
    blind = CRF(appearance=3.0, theta_a=4.0, theta_b=1e4, smoothness=0.0, radius=4, dilation=1)
    with_edge = crf_refine(probs, image, edge).argmax(0)
    without = crf_refine(probs, image, blind).argmax(0)
    assert (with_edge[:, :12] == 0).all() and (with_edge[:, 12:] == 1).all()
    assert (without[:, 12:15] == 0).all()  # the colour-blind kernel moves the boundary 3 columns right
    assert (without[:, 20:] == 1).all()


def test_bad_inputs():
    probs = torch.rand(3, 5, 6).softmax(0)
    with pytest.raises(ValueError, match=r"image of shape \(3, 5, 7\) does not match the score map's size \(5, 6\)"):
        crf_refine(probs, torch.zeros(3, 5, 7))
    with pytest.raises(ValueError, match=r"probs must be \(K, H, W\)"):
        crf_refine(probs[None], torch.zeros(3, 5, 6))
    with pytest.raises(ConfigError, match="radius and dilation >= 1"):
        CRF(radius=0)
    with pytest.raises(ConfigError, match="standard deviations must be positive"):
        CRF(theta_b=0)


def test_spec_round_trip_and_errors():
    assert parse_crf(None) is None and parse_crf("none") is None and parse_crf("") is None
    assert parse_crf("default") == CRF()
    crf = parse_crf("appearance=2.5,theta_b=5,radius=6")
    assert (crf.appearance, crf.theta_b, crf.radius, crf.iterations) == (2.5, 5.0, 6, CRF().iterations)
    assert parse_crf(str(crf)) == crf and str(CRF()) == "default"
    assert parse_crf({"iterations": 2}) == CRF(iterations=2)
    with pytest.raises(ConfigError, match="unknown key 'sigma'; the keys are iterations, appearance"):
        parse_crf("sigma=3")
    with pytest.raises(ConfigError, match="radius must be a finite int, got '2.5'"):
        parse_crf("radius=2.5")
    with pytest.raises(ConfigError, match="write 'default' or key=value pairs"):
        parse_crf("strong")


def test_segment_and_evaluate_apply_it_with_the_images_colours():
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.inference.segment import segment

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    raw = torch.randint(0, 256, (3, 16, 20)).float()
    x = (raw / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    crf = CRF(appearance=3.0, theta_a=3.0, theta_b=30.0, radius=2, dilation=1)
    probs = segment(model, [x], precision="fp32", tta="flip", probs=True)[0]
    got = segment(model, [x], precision="fp32", tta="flip", crf=crf, std=std)[0]
    assert torch.allclose(got, crf_refine(probs, raw, crf), atol=1e-5)
    assert not torch.allclose(got, probs, atol=1e-3)  # the CRF did something
    with pytest.raises(ValueError, match="needs the normalisation's std="):
        segment(model, [x], crf=crf)

    class Pairs(torch.utils.data.Dataset):
        num_classes, classes, ignore_index = 4, ["a", "b", "c", "d"], 255

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return x, got.argmax(0)  # labels = the CRF's own prediction

    res = evaluate(model, Pairs(), precision="fp32", tta="flip", crf=crf, std=std, mean=mean)
    plain = evaluate(model, Pairs(), precision="fp32", tta="flip")
    assert res["pixel_acc"] == 1.0 and plain["pixel_acc"] < 1.0
    with pytest.raises(ConfigError, match=r"evaluate\(crf=...\) needs the normalisation's std="):
        evaluate(model, Pairs(), crf=crf)


def test_compiled_loops_that_cannot_compile_fall_back_to_torch(monkeypatch, caplog):
    """A machine where numba cannot compile or cache (no writable folder, say) still refines:
    the warm-up's failure is logged and the torch loop runs."""
    import fcnseg.inference.crf as crf_module

    def no_compile(*args, **kwargs):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(crf_module, "_compiled_messages", no_compile)
    with caplog.at_level("WARNING", logger="fcnseg.inference.crf"):
        assert crf_module._kernel.__wrapped__() is None
    assert "compiled loops are unavailable (RuntimeError: cannot cache function" in caplog.text
    monkeypatch.setattr(crf_module, "_kernel", crf_module._kernel.__wrapped__)  # uncached: the failing one
    probs = torch.rand(3, 6, 7).softmax(0)
    out = crf_refine(probs, torch.zeros(3, 6, 7), CRF(radius=2, dilation=1))
    assert out.shape == probs.shape and torch.allclose(out.sum(0), torch.ones(6, 7), atol=1e-5)
