"""Every figure of the documentation, drawn by fcnseg itself from real tensors.

    python docs/figures/make.py            # all of its figures (about a minute on 2 cores)
    python docs/figures/make.py --quick    # the same: every figure here is cheap and deterministic
    python docs/figures/make.py --only upsampling label_resize --out /tmp/figs

Each figure ``NAME`` is ``NAME.png`` plus ``NAME.json``: the numbers the picture shows
(shapes, matrices, counts, scores). ``tests/test_docs_figures.py`` regenerates the cheap
figures into a temporary folder and compares their JSON with the committed one (numbers,
not PNG bytes: fonts and renderers differ between machines). The figures of trained models
are ``docs/figures/make_trained.py``'s.

The data come from ``../shared/data`` next to the checkout (``--data`` to change it): the
Oxford-IIIT Pet images and trimaps. Where they are absent the figures fall back to fcnseg's
built-in synthetic data and say so in their JSON (``"data": "synthetic"``), which the pages'
captions repeat.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"  # ../shared/data relative to the checkout
PET_EXAMPLE = "British_Shorthair_102"  # an image of the official test list
CHEAP = ("fc_to_conv", "downsampling", "transposed_conv", "upsampling", "label_resize", "architecture")
FIGURES = CHEAP  # the trained figures are docs/figures/make_trained.py's


# --------------------------------------------------------------------------- helpers


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def _write_json(numbers: dict, path: Path) -> None:
    path.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")


def _matrix(ax, m, title: str = "", fmt: str = "{:g}", cmap: str = "Blues", highlight=None, vmax=None):
    """Draw a small matrix with its numbers in the cells (``highlight``: a bool mask drawn
    with a red edge)."""
    m = np.asarray(m, dtype=float)
    hi = np.abs(m).max() if vmax is None else vmax
    ax.imshow(m, cmap=cmap, vmin=min(0.0, m.min()), vmax=hi if hi > 0 else 1.0)
    for (y, x), v in np.ndenumerate(m):
        strong = hi > 0 and abs(v) > 0.6 * hi
        ax.text(x, y, fmt.format(v), ha="center", va="center", fontsize=8 if m.shape[0] < 8 else 6,
                color="white" if strong else "black")
    if highlight is not None:
        from matplotlib.patches import Rectangle

        for (y, x), on in np.ndenumerate(np.asarray(highlight)):
            if on:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(np.arange(-0.5, m.shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, m.shape[0], 1), minor=True)
    ax.grid(which="minor", color="grey", lw=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(title, fontsize=9)


def _rounded(a, digits: int = 6):
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def pet_root(data: Path) -> Path | None:
    root = data / "oxford-pet-mini"
    return root if (root / "annotations" / "trimaps").is_dir() else None


def example_pair(data: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """The example image (uint8 RGB) and its raw trimap (1 pet, 2 background, 3 border),
    or a synthetic stand-in (an ellipse 'pet' with a border ring) when the data are absent."""
    root = pet_root(data)
    if root is not None:
        from PIL import Image

        from fcnseg.data.base import image_to_rgb, open_image

        image = image_to_rgb(open_image(root / "images" / f"{PET_EXAMPLE}.jpg"))
        trimap = np.array(Image.open(root / "annotations" / "trimaps" / f"{PET_EXAMPLE}.png"))
        return image, trimap, f"Oxford-IIIT Pet {PET_EXAMPLE}"
    from fcnseg.data import build_dataset

    image, _ = build_dataset("synthetic", split="val").load(0)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2
    trimap = np.full((h, w), 2, np.uint8)
    trimap[r < 1.15] = 3
    trimap[r < 1.0] = 1
    return image, trimap, "synthetic (fcnseg's built-in data; ../shared/data was absent)"


def _normalised(image: np.ndarray) -> torch.Tensor:
    from fcnseg.weights import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def _resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- 1x1 convolutions


def seeded_vgg16(seed: int = 0):
    """fcnseg's VGG16 backbone with fc6/fc7, loaded through fcnseg's real conversion
    (:func:`fcnseg.weights.load_backbone_state`) from a torchvision-format state dict
    (``features.*``, ``classifier.{0,3,6}.*``) of seeded random values: the development
    machines cannot download the ImageNet file, and the conversion does not care what the
    numbers are. Returns the backbone and the state dict."""
    from fcnseg.models.backbones.vgg import VGG
    from fcnseg.weights import load_backbone_state

    with torch.device("meta"):  # no time spent initialising what the state overwrites
        vgg = VGG("vgg16", with_fc=True)
    vgg = vgg.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in vgg.state_dict().items():
        if k.startswith("features.") and k.endswith(".weight"):  # He-scaled, as VGG's init
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2 / (v.shape[0] * 9))
        elif k.startswith("features."):
            state[k] = torch.zeros(v.shape)
    for j, (o, n) in {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}.items():
        state[f"classifier.{j}.weight"] = torch.randn(o, n, generator=g) * 0.01
        state[f"classifier.{j}.bias"] = torch.randn(o, generator=g) * 0.01
    load_backbone_state(vgg, state, source="seeded VGG16 state")
    return vgg, state


def fig_fc_to_conv(out: Path, data: Path, draw: bool = True) -> dict:
    vgg, state = seeded_vgg16()
    w0, w6 = state["classifier.0.weight"], vgg.fc6.weight.detach()
    exact_fc6 = bool(torch.equal(w0.reshape(4096, 512, 7, 7), w6))
    exact_fc7 = bool(torch.equal(state["classifier.3.weight"].reshape(4096, 4096, 1, 1), vgg.fc7.weight))

    image, _, source = example_pair(data)
    with torch.no_grad():
        # an image larger than 224: a grid of fc6/fc7 outputs, one per 32-pixel cell
        h0, w0_ = image.shape[:2]
        big_h, big_w = 256, int(round(256 * w0_ / h0 / 32)) * 32
        big = _resize_image(image, big_h, big_w)
        p5 = vgg.features(_normalised(big))
        f6 = vgg.fc6(p5)
        f7 = vgg.fc7(F.relu(f6))
        # fc6 at a cell = the Linear layer on the flattened 512x7x7 pool5 window centred
        # there (what a 224x224 crop's pool5 would hold, up to the trunk's own borders);
        # fc6's padding 3 puts zeros beyond the map's border
        cy, cx = p5.shape[2] // 2, p5.shape[3] // 2
        win = F.pad(p5, (3, 3, 3, 3))[0, :, cy : cy + 7, cx : cx + 7]
        lin_cell = F.linear(win.reshape(1, -1), w0, state["classifier.0.bias"])[0]
        diff_cell = float((lin_cell - f6[0, :, cy, cx]).abs().max() / lin_cell.abs().max())
        fmap = f7[0, 0].numpy()

    numbers = {
        "source": source,
        "data": "real" if "Pet" in source else "synthetic",
        "fc6_weight_shape": list(w6.shape),
        "fc7_weight_shape": list(vgg.fc7.weight.shape),
        "linear_weight_shapes": [list(w0.shape), list(state["classifier.3.weight"].shape)],
        "fc6_is_reshaped_linear": exact_fc6,
        "fc7_is_reshaped_linear": exact_fc7,
        "big_input": [big_h, big_w],
        "pool5_big": list(p5.shape[1:]),
        "fc7_big": list(f7.shape[1:]),
        "linear_vs_fc6_rel_diff_big_cell": diff_cell,
        "cell": [cy, cx],
        "fc7_big_channel0": _rounded(fmap, 4),
    }
    if not draw:
        return numbers
    fig = _figure(13, 6.6)
    gs = fig.add_gridspec(2, 4, height_ratios=[1, 1.35], hspace=0.35, wspace=0.3)
    ax = fig.add_subplot(gs[0, :2])
    row = w0[0, : 3 * 49].numpy()
    vmax = float(np.abs(row).max())
    ax.imshow(row[None, :], aspect="auto", cmap="coolwarm", vmin=-vmax, vmax=vmax, interpolation="nearest")
    for c in (1, 2):
        ax.axvline(49 * c - 0.5, color="k", lw=1)
    ax.set_yticks([])
    ax.set_xticks([0, 49, 98, 146])
    ax.set_title("classifier.0 (Linear 25088 -> 4096), row 0: its first 3 x 49 of 25,088 weights", fontsize=9)
    sub = gs[0, 2:].subgridspec(1, 3, wspace=0.15)
    for c in range(3):
        axk = fig.add_subplot(sub[0, c])
        axk.imshow(w6[0, c].numpy(), cmap="coolwarm", vmin=-vmax, vmax=vmax, interpolation="nearest")
        axk.set_xticks([])
        axk.set_yticks([])
        axk.set_title(f"fc6 kernel 0, channel {c}\n(7x7 = weights {49 * c}..{49 * c + 48})", fontsize=8)
    ax2 = fig.add_subplot(gs[1, :2])
    ax2.imshow(big)
    for y in range(0, big_h + 1, 32):
        ax2.axhline(y - 0.5, color="white", lw=0.5, alpha=0.7)
    for x in range(0, big_w + 1, 32):
        ax2.axvline(x - 0.5, color="white", lw=0.5, alpha=0.7)
    from matplotlib.patches import Rectangle

    ax2.add_patch(Rectangle(((cx - 3) * 32 - 0.5, (cy - 3) * 32 - 0.5), 224, 224, fill=False, ec="red", lw=2))
    ax2.add_patch(Rectangle((cx * 32 - 0.5, cy * 32 - 0.5), 32, 32, fill=True, fc="red", alpha=0.6))
    ax2.set_title(f"input {big_h}x{big_w}: {p5.shape[2]}x{p5.shape[3]} cells of 32 px; red: the 7x7 cells\n"
                  "(224 px) whose pool5 features fc6 reads for the filled cell", fontsize=9)
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax3 = fig.add_subplot(gs[1, 2:])
    im = ax3.imshow(fmap, cmap="viridis", interpolation="nearest")
    ax3.add_patch(Rectangle((cx - 0.5, cy - 0.5), 1, 1, fill=False, ec="red", lw=2))
    fig.colorbar(im, ax=ax3, fraction=0.035)
    ax3.set_title(f"fc7 output, channel 0: a {f7.shape[2]}x{f7.shape[3]} map (4096 channels),\n"
                  "one classifier output per cell (seeded random weights)", fontsize=9)
    ax3.set_xticks([])
    ax3.set_yticks([])
    _save(fig, out / "fc_to_conv.png")
    return numbers


# --------------------------------------------------------------------------- downsampling


def fig_downsampling(out: Path, data: Path, draw: bool = True) -> dict:
    from fcnseg.models.backbones.vgg import VGG

    torch.manual_seed(0)
    image, _, source = example_pair(data)
    x = _normalised(image)
    if not draw:  # the numbers are shapes: the meta device gives them without computing
        with torch.device("meta"):
            vgg = VGG("vgg16", with_fc=False).eval()
        x = x.to("meta")
    else:
        vgg = VGG("vgg16", with_fc=False).eval()
    with torch.no_grad():
        feats = vgg(x)
    names = ["conv1", "pool1", "pool2", "pool3", "pool4", "pool5"]
    h, w = image.shape[:2]
    numbers = {
        "source": source,
        "data": "real" if "Pet" in source else "synthetic",
        "input": [3, h, w],
        "shapes": {n: list(feats[n].shape[1:]) for n in names},
        "strides": {n: vgg.strides[n] for n in names},
        "ceil_h_w_over_stride": {n: [math.ceil(h / vgg.strides[n]), math.ceil(w / vgg.strides[n])] for n in names},
    }
    if not draw:
        return numbers
    fig = _figure(13, 5.2)
    axes = fig.subplots(2, 4, gridspec_kw={"wspace": 0.08, "hspace": 0.12})
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(f"input: 3 x {h} x {w}", fontsize=10)
    for ax, n in zip(list(axes.flat)[1:], names, strict=False):
        f = feats[n][0]
        ax.imshow(f.abs().mean(0).numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"{n} (stride {vgg.strides[n]}): {f.shape[0]} x {f.shape[1]} x {f.shape[2]}", fontsize=10)
    axes[1, 3].axis("off")
    axes[1, 3].text(0.0, 0.5, "each map: the mean |activation|\nover its channels, drawn at the\nsame width (one square = one\nfeature-map pixel); VGG16 trunk\nwith seeded random weights", fontsize=10, va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, out / "downsampling.png")
    return numbers


# --------------------------------------------------------------------------- upsampling


def zero_insert(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(h, w)`` -> ``((h-1)*s+1, (w-1)*s+1)``: ``s-1`` zeros between neighbouring pixels."""
    h, w = x.shape
    z = x.new_zeros((h - 1) * stride + 1, (w - 1) * stride + 1)
    z[::stride, ::stride] = x
    return z


def transposed_conv_by_hand(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1, padding: int = 0,
                            output_padding: int = 0) -> dict[str, torch.Tensor]:
    """A transposed convolution of a 2-D map written out as the tutorial explains it: insert
    ``stride-1`` zeros between pixels, pad ``k-1-padding`` zeros around (``output_padding``
    more at the bottom and right), then slide the kernel rotated by 180 degrees over the
    result (stride 1, no padding). Returns each step; ``out`` has
    ``(i-1)*stride - 2*padding + k + output_padding`` pixels a side."""
    k = kernel.shape[-1]
    inserted = zero_insert(x, stride)
    q = k - 1 - padding
    padded = F.pad(inserted, (q, q + output_padding, q, q + output_padding)) if q >= 0 else inserted
    if q < 0:  # padding larger than k-1 crops instead
        padded = padded[-q : padded.shape[0] + q + output_padding, -q : padded.shape[1] + q + output_padding]
    flipped = kernel.flip(0, 1)
    outp = F.conv2d(padded[None, None], flipped[None, None])[0, 0]
    return {"inserted": inserted, "padded": padded, "flipped": flipped, "out": outp}


def transposed_output_size(i: int, stride: int, padding: int, kernel: int, output_padding: int = 0) -> int:
    """``(i-1)*s - 2p + k + output_padding``: the output size of a transposed convolution."""
    return (i - 1) * stride - 2 * padding + kernel + output_padding


TUTORIAL_MAP = [[1.0, 2.0], [3.0, 4.0]]
TUTORIAL_KERNEL = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 1.0]]  # not symmetric: shows the flip


def fig_transposed_conv(out: Path, data: Path, draw: bool = True) -> dict:
    x = torch.tensor(TUTORIAL_MAP, dtype=torch.float64)
    k = torch.tensor(TUTORIAL_KERNEL, dtype=torch.float64)
    cases = {"to_4x4": dict(stride=1, padding=0), "to_5x5": dict(stride=2, padding=0)}
    numbers: dict = {"map": TUTORIAL_MAP, "kernel": TUTORIAL_KERNEL, "cases": {}}
    steps_of = {}
    for name, kw in cases.items():
        steps = steps_of[name] = transposed_conv_by_hand(x, k, **kw)
        conv = torch.nn.ConvTranspose2d(1, 1, 3, stride=kw["stride"], padding=kw["padding"], bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(k[None, None])
            ref = conv(x[None, None])[0, 0]
        numbers["cases"][name] = {
            **kw,
            "inserted": steps["inserted"].tolist(),
            "padded_shape": list(steps["padded"].shape),
            "out": steps["out"].tolist(),
            "torch_out": ref.tolist(),
            "formula": transposed_output_size(2, kw["stride"], kw["padding"], 3),
            "equal_to_torch": bool(torch.equal(steps["out"], ref)),
        }
    if not draw:
        return numbers
    fig = _figure(15, 7.4)
    axes = fig.subplots(2, 5, gridspec_kw={"width_ratios": [2, 3.5, 7, 3, 5], "wspace": 0.25, "hspace": 0.45})
    for r, (name, kw) in enumerate(cases.items()):
        steps, s = steps_of[name], kw["stride"]
        size = numbers["cases"][name]["formula"]
        placed = np.zeros(steps["padded"].shape, bool)
        n = steps["inserted"].shape[0]
        placed[2 : 2 + n : s, 2 : 2 + n : s] = True  # where the input's pixels went
        _matrix(axes[r, 0], x, "input 2x2")
        _matrix(axes[r, 1], steps["inserted"], f"{s - 1} zero{'s' if s != 2 else ''} between\npixels (stride {s})")
        _matrix(axes[r, 2], steps["padded"], f"padded with k-1-p = 2 zeros\n({steps['padded'].shape[0]}x{steps['padded'].shape[1]})",
                highlight=placed)
        _matrix(axes[r, 3], steps["flipped"], "kernel rotated 180°,\nslid with stride 1", cmap="Oranges")
        _matrix(axes[r, 4], steps["out"], f"output {size}x{size}\n= ConvTranspose2d(k=3, s={s}, p=0)", cmap="Greens")
        axes[r, 0].set_ylabel("2x2 -> " + name[3:], fontsize=11)
    fig.suptitle("Transposed convolution by hand: insert zeros, pad, slide a 3x3 kernel; "
                 f"kernel (before rotation) {np.array(TUTORIAL_KERNEL, int).tolist()}; output size (i-1)s - 2p + k", fontsize=11)
    _save(fig, out / "transposed_conv.png")
    return numbers


def fig_upsampling(out: Path, data: Path, draw: bool = True) -> dict:
    """The same 2x2 map upsampled to 4x4 three ways, with fcnseg's own upsamplers."""
    from fcnseg.models.upsample import bilinear_kernel, deconv, interpolate, unpool

    x = torch.tensor(TUTORIAL_MAP)[None, None]
    # 1. fixed bilinear interpolation (the "bilinear" upsampler, VGG's cell geometry)
    bil = interpolate(x, 2, "cell")[0, 0]
    # 2. fcnseg's learnable deconvolution at initialisation: ConvTranspose2d(k=4, s=2, p=1)
    #    with a bilinear kernel; away from the border it equals the interpolation
    up = deconv(1, 2, "cell")
    with torch.no_grad():
        dec = up(x)[0, 0]
    kern = bilinear_kernel(1, 1, 4)[0, 0]
    # 3. max unpooling: a 4x4 map whose 2x2 max-pool is the same 2x2 map, and the
    #    switches (arg-max positions) the pool recorded
    before = torch.tensor([[0.5, 1.0, 0.0, 2.0], [0.2, 0.0, 1.5, 0.3], [0.0, 2.5, 4.0, 0.0], [3.0, 1.0, 0.0, 1.0]])
    pooled, idx = F.max_pool2d(before[None, None], 2, 2, return_indices=True)
    unp = unpool(pooled, idx, before.shape)[0, 0]
    numbers = {
        "map": TUTORIAL_MAP,
        "bilinear": _rounded(bil),
        "deconv_kernel": _rounded(kern),
        "deconv_init": _rounded(dec),
        "deconv_equals_bilinear_inside": bool((bil - dec)[1:3, 1:3].abs().max() < 1e-6),
        "before_pool": _rounded(before),
        "pooled": _rounded(pooled[0, 0]),
        "switches": idx[0, 0].tolist(),
        "unpooled": _rounded(unp),
    }
    if not draw:
        return numbers
    fig = _figure(15, 6.6)
    axes = fig.subplots(2, 4, gridspec_kw={"wspace": 0.3, "hspace": 0.4})
    _matrix(axes[0, 0], x[0, 0], "the map (2x2)")
    _matrix(axes[0, 1], bil, "1. bilinear interpolation\n(fixed; fcnseg 'bilinear')", fmt="{:.3g}", vmax=4)
    _matrix(axes[0, 2], kern, "2. transposed conv kernel 4x4, s=2, p=1\n(fcnseg 'deconv' starts bilinear)", fmt="{:.4g}", cmap="Oranges")
    _matrix(axes[0, 3], dec, "2. its output (4x4): learnable; at init\nequal to 1. inside, lower at the edge", fmt="{:.3g}", cmap="Greens", vmax=4)
    _matrix(axes[1, 0], before, "a 4x4 map before pooling", fmt="{:g}", highlight=(unp != 0).numpy())
    _matrix(axes[1, 1], pooled[0, 0], "max-pool 2x2: the same map\n(switches kept)")
    _matrix(axes[1, 2], idx[0, 0].float(), "switches: flat index of\neach maximum", fmt="{:.0f}", cmap="Purples")
    _matrix(axes[1, 3], unp, "3. max unpooling (4x4): values back\nwhere the maxima were, zeros elsewhere", cmap="Greens", vmax=4)
    _save(fig, out / "upsampling.png")
    return numbers


# --------------------------------------------------------------------------- label resizing


def bilinear_like_tf(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What the tutorial's ``tf.image.resize(anno, (224, 224))`` does to a label map:
    bilinear interpolation with half-pixel centres and no antialiasing (float32 out)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)[0, 0].numpy()


def bilinear_sources(src: tuple[int, int], dst: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two source rows and columns each output pixel of a half-pixel-centred bilinear
    resize from ``src`` to ``dst`` reads: ``(y0, y1, x0, x1)``, clamped to the map."""
    out = []
    for n_src, n_dst in zip(src, dst, strict=True):
        pos = np.maximum((np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5, 0)
        lo = np.minimum(np.floor(pos).astype(np.int64), n_src - 1)
        out += [lo, np.minimum(lo + 1, n_src - 1)]
    return out[0], out[1], out[2], out[3]


def fig_label_resize(out: Path, data: Path, draw: bool = True) -> dict:
    from fcnseg.data.transforms import Resize

    image, trimap, source = example_pair(data)
    size = (224, 224)
    bil = bilinear_like_tf(trimap, size)
    fractional = int((np.abs(bil - np.round(bil)) >= 1e-4).sum())
    # the tutorial then subtracts 1 and Keras' sparse cross-entropy casts the float labels to
    # int (truncation); values within 1e-4 of an integer count as that integer
    keras = np.floor(bil - 1 + 1e-4).astype(np.int64)
    # invented: a label that none of the (up to four) trimap pixels the interpolation read has
    y0, y1, x0, x1 = bilinear_sources(trimap.shape, size)
    t = trimap.astype(np.int64) - 1
    neighbours = np.stack([t[y0][:, x0], t[y0][:, x1], t[y1][:, x0], t[y1][:, x1]])
    invented = (neighbours != keras[None]).all(0)
    # fcnseg: the real transform, on the dataset's class indices (pet 0, background 1, border 2)
    classes = np.full(256, 255, np.uint8)
    classes[[1, 2, 3]] = [0, 1, 2]
    _, near = Resize(size)(image, classes[trimap])
    near = np.asarray(near)
    near_invented = ~np.isin(near, np.unique(classes[trimap]))
    numbers = {
        "source": source,
        "data": "real" if "Pet" in source else "synthetic",
        "trimap_shape": list(trimap.shape),
        "size": list(size),
        "values_before": sorted(int(v) for v in np.unique(trimap)),
        "bilinear_distinct_values": int(len(np.unique(np.round(bil, 4)))),
        "bilinear_fractional_pixels": fractional,
        "keras_label_counts": {str(v): int((keras == v).sum()) for v in np.unique(keras)},
        "keras_invented_pixels": int(invented.sum()),
        "keras_invented_labels": {str(v): int((invented & (keras == v)).sum()) for v in np.unique(keras[invented])},
        "keras_vs_fcnseg_disagree": int((keras != near).sum()),
        "fcnseg_values": sorted(int(v) for v in np.unique(near)),
        "fcnseg_invented_pixels": int(near_invented.sum()),
    }
    if not draw:
        return numbers
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    # the 8x8 window with the most invented labels, and a 24x24 zoom around it
    dens = np.lib.stride_tricks.sliding_window_view(invented, (8, 8)).sum((-1, -2))
    vy, vx = (int(v) for v in np.unravel_index(np.argmax(dens), dens.shape))
    ys, xs = np.nonzero(invented[vy : vy + 8, vx : vx + 8])  # centre the window on them
    vy = min(max(vy + int(round(ys.mean())) - 4, 0), size[0] - 8) if len(ys) else vy
    vx = min(max(vx + int(round(xs.mean())) - 4, 0), size[1] - 8) if len(xs) else vx
    z = 24
    zy, zx = min(max(vy - 8, 0), size[0] - z), min(max(vx - 8, 0), size[1] - z)
    crop = (slice(zy, zy + z), slice(zx, zx + z))
    cmap3 = ListedColormap(["#b03030", "#202020", "#f0f0f0"])
    fig = _figure(15, 7.6)
    axes = fig.subplots(2, 4, gridspec_kw={"wspace": 0.25, "hspace": 0.32})
    axes[0, 0].imshow(_resize_image(image, *size))
    axes[0, 0].set_title("image, resized to 224x224", fontsize=9)
    axes[0, 1].imshow(trimap, cmap=cmap3, vmin=1, vmax=3, interpolation="nearest")
    axes[0, 1].set_title(f"trimap {trimap.shape[0]}x{trimap.shape[1]}, values {numbers['values_before']}:\n"
                         "1 pet (red), 2 background (black), 3 border (white)", fontsize=9)
    im = axes[0, 2].imshow(bil, cmap="viridis", vmin=1, vmax=3, interpolation="nearest")
    fig.colorbar(im, ax=axes[0, 2], fraction=0.04)
    axes[0, 2].set_title(f"bilinear, as the tutorial: {numbers['bilinear_distinct_values']} distinct values;\n"
                         f"{fractional} pixels are no class at all", fontsize=9)
    axes[0, 3].imshow(near, cmap=cmap3, vmin=0, vmax=2, interpolation="nearest")
    axes[0, 3].set_title(f"fcnseg's Resize (masks NEAREST): values\n{numbers['fcnseg_values']} = pet, background, border", fontsize=9)
    for ax in (axes[0, 2], axes[0, 3]):
        ax.add_patch(Rectangle((zx - 0.5, zy - 0.5), z, z, fill=False, ec="red", lw=1.5))
    win = (slice(vy, vy + 8), slice(vx, vx + 8))
    _matrix(axes[1, 0], bil[win], "bilinear values in the red box's centre;\nred: labels invented after int(value - 1)",
            fmt="{:.3f}", cmap="viridis", highlight=invented[win])
    axes[1, 1].imshow(keras[crop], cmap=cmap3, vmin=0, vmax=2, interpolation="nearest")
    axes[1, 1].set_title("the tutorial's labels: int(value - 1)\n(red box, zoomed)", fontsize=9)
    axes[1, 2].imshow(near[crop], cmap=cmap3, vmin=0, vmax=2, interpolation="nearest")
    axes[1, 2].set_title("fcnseg's labels (red box, zoomed)", fontsize=9)
    axes[1, 3].imshow(invented, cmap="Reds", interpolation="nearest")
    axes[1, 3].set_title(f"{int(invented.sum())} tutorial labels found in none of the trimap\n"
                         "pixels they were interpolated from (fcnseg: 0)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, out / "label_resize.png")
    return numbers


# --------------------------------------------------------------------------- trained figures


ARCH_MODELS = ("fcn32s", "fcn16s", "fcn8s", "seed")
ARCH_SIZE = (224, 224)  # the tutorial's input size


def fig_architecture(out: Path, data: Path, draw: bool = True) -> dict:
    """FCN-32s, 16s, 8s and the tutorial's ``seed`` net over VGG16 (3 classes, as on Pet),
    drawn by ``fcnseg.models.diagram`` from a forward pass of each model on a 224x224 input:
    one PNG per model (``arch_NAME.png``), every stage's shape in the JSON."""
    from fcnseg.models import build_model
    from fcnseg.models.diagram import draw_architecture, trace_stages

    numbers = {"input": list(ARCH_SIZE), "backbone": "vgg16", "num_classes": 3, "models": {}}
    for name in ARCH_MODELS:
        model = build_model(name, backbone="vgg16", num_classes=3)
        titles = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s", "seed": "seed (the tutorial's network)"}
        if draw:
            stages = draw_architecture(model, out / f"arch_{name}.png", size=ARCH_SIZE,
                                       title=f"{titles[name]} over VGG16, 3 classes, a {ARCH_SIZE[0]}x{ARCH_SIZE[1]} input")
        else:
            stages = trace_stages(model, ARCH_SIZE)
        numbers["models"][name] = {
            "stages": [{"name": s.name, "kind": s.kind, "shape": list(s.shape), "stride": s.stride, "inputs": s.inputs, "op": s.op}
                       for s in stages],
            "adds": sum(s.kind == "add" for s in stages),
        }
    return numbers


# --------------------------------------------------------------------------- driver

MAKERS = {
    "fc_to_conv": fig_fc_to_conv,
    "downsampling": fig_downsampling,
    "transposed_conv": fig_transposed_conv,
    "upsampling": fig_upsampling,
    "label_resize": fig_label_resize,
    "architecture": fig_architecture,
}


def make(names, out: Path, data: Path, draw: bool = True) -> dict[str, dict]:
    """Draw the figures ``names`` into ``out`` (``NAME.png`` + ``NAME.json``); returns the
    numbers. ``draw=False`` computes the numbers only (what the test compares)."""
    out.mkdir(parents=True, exist_ok=True)
    numbers = {}
    for name in names:
        t0 = time.perf_counter()
        numbers[name] = MAKERS[name](out, data, draw)
        _write_json(numbers[name], out / f"{name}.json")
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only the cheap figures: {', '.join(CHEAP)}")
    p.add_argument("--only", nargs="+", choices=FIGURES, help="these figures only")
    p.add_argument("--out", type=Path, default=HERE, help="output folder (default: docs/figures)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    args = p.parse_args(argv)
    names = args.only or (CHEAP if args.quick else FIGURES)
    t0 = time.perf_counter()
    make(names, args.out, args.data)
    print(f"all: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
