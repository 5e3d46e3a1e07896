"""Upsampling for the decoders: bilinear kernels, deconvolution, fixed interpolation, unpooling.

Geometry. Where a feature map's pixel ``i`` sits in the input depends on the backbone:

* ``"cell"`` (VGG: 3x3 'same' convs, 2x2 pools): pixel ``i`` at stride ``s`` covers input
  pixels ``[s*i, s*(i+1))``, centre ``s*i + (s-1)/2``. Upsampling by ``f`` is
  ``F.interpolate(align_corners=False)`` or a ``2f`` deconvolution with padding ``f/2``.
* ``"corner"`` (ResNet: strided 3x3 convs with padding 1): pixel ``i`` is centred on input
  pixel ``s*i``. Upsampling by ``f`` puts source pixel ``i`` on target pixel ``f*i``
  (``align_corners=True`` spacing) or a ``2f-1`` deconvolution with padding ``f-1``.
* ``"caffe"`` (``align="paper"``): the authors' unpadded ``2f`` deconvolution, output size
  ``(h+1)*f``; the FCN head then crops at the authors' offsets.

Every upsampler here maps ``(N, C, h, w)`` to its *natural* size (``(N, C', h*f, w*f)``,
``(h+1)*f`` for "caffe", the pre-pool size for unpooling), which is at least the size of
the finer map it is fused with; callers crop by slicing (cheap, keeps channels_last).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEOMETRIES = ("cell", "corner", "caffe")


def bilinear_kernel(in_channels: int, out_channels: int, size: int) -> Tensor:
    """Weights ``(in_channels, out_channels, size, size)`` for ``ConvTranspose2d`` that
    upsample each channel on its own (channel ``c`` -> ``c``, the rest zero) by bilinear
    interpolation; ``size`` may be even (``2f``, cell/caffe) or odd (``2f-1``, corner).
    As in fcn.berkeleyvision.org's ``surgery.upsample_filt``."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).to(torch.float32)
    weight = torch.zeros(in_channels, out_channels, size, size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = filt
    return weight


def deconv(channels: int, factor: int, geometry: str) -> nn.ConvTranspose2d:
    """A bilinear-initialised, learnable ``ConvTranspose2d(channels, channels)`` by ``factor``.

    Output size: ``h*factor`` ("cell", "corner") or ``(h+1)*factor`` ("caffe")."""
    if geometry == "cell":
        size, padding, output_padding = 2 * factor, factor // 2, 0
    elif geometry == "corner":
        size, padding, output_padding = 2 * factor - 1, factor - 1, factor - 1
    elif geometry == "caffe":
        size, padding, output_padding = 2 * factor, 0, 0
    else:
        raise ValueError(f"unknown geometry {geometry!r}")
    conv = nn.ConvTranspose2d(
        channels,
        channels,
        size,
        stride=factor,
        padding=padding,
        output_padding=output_padding,
        bias=False,
    )
    with torch.no_grad():
        conv.weight.copy_(bilinear_kernel(channels, channels, size))
    return conv


def interpolate(x: Tensor, factor: int, geometry: str) -> Tensor:
    """Fixed bilinear upsampling by ``factor`` with the same geometry as :func:`deconv`:
    ``(N, C, h, w)`` -> ``(N, C, h*f, w*f)`` ("cell", "corner") or ``(h+1)*f`` ("caffe")."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    if geometry == "cell":
        return F.interpolate(x, size=(h * factor, w * factor), mode="bilinear", align_corners=False)
    if geometry == "corner":
        # one replicated pixel at the end lets the last f-1 target pixels extrapolate flat
        x = _replicate_pad(x, 0, 1)
        y = F.interpolate(
            x, size=(h * factor + 1, w * factor + 1), mode="bilinear", align_corners=True
        )
        return y[..., : h * factor, : w * factor]
    if geometry == "caffe":
        # the unpadded 2f deconvolution's frame is the cell frame shifted by f/2 and
        # (h+1)*f long: pad one pixel each side, interpolate, cut the window out
        x = _replicate_pad(x, 1, 1)
        y = F.interpolate(
            x, size=((h + 2) * factor, (w + 2) * factor), mode="bilinear", align_corners=False
        )
        o = factor // 2
        return y[..., o : o + (h + 1) * factor, o : o + (w + 1) * factor]
    raise ValueError(f"unknown geometry {geometry!r}")


class Deconv(nn.Module):
    """Learnable upsampling: a bilinear-initialised transposed convolution."""

    def __init__(self, channels: int, factor: int, geometry: str) -> None:
        super().__init__()
        self.factor = factor
        self.up = deconv(channels, factor, geometry)

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        return self.up(x)


class Bilinear(nn.Module):
    """Fixed bilinear upsampling (no parameters)."""

    def __init__(self, factor: int, geometry: str) -> None:
        super().__init__()
        self.factor, self.geometry = factor, geometry

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        return interpolate(x, self.factor, self.geometry)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, geometry={self.geometry!r}"


class Unpool(nn.Module):
    """SegNet-style upsampling through the backbone's max-pooling switches.

    Goes down the backbone's levels one 2x step at a time. At level ``k`` the map is
    projected by a 1x1 conv to the channel count of the switches ``idx{k}`` (they are
    per channel, shape ``(N, C_k, h, w)``), then ``max_unpool2d`` puts every value back
    where the pool took its maximum, giving the pre-pool size (that of ``conv{k}``). A
    final 1x1 conv projects to ``out_channels``. Levels without switches (a ResNet's
    stride-2 stem conv) fall back to fixed bilinear 2x upsampling.

    ``levels``: ``[(k, C_k or None), ...]`` from coarse to fine; ``None`` = no switches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        levels: list[tuple[int, int | None]],
        geometry: str,
    ) -> None:
        super().__init__()
        self.levels = [k for k, _ in levels]
        self.geometry = geometry
        self.proj = nn.ModuleList()
        ch = in_channels
        for _, c in levels:
            if c is None or c == ch:
                self.proj.append(nn.Identity())
            else:
                self.proj.append(nn.Conv2d(ch, c, 1))
                ch = c
        self.out = nn.Identity() if ch == out_channels else nn.Conv2d(ch, out_channels, 1)

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        for k, proj in zip(self.levels, self.proj, strict=True):
            idx = feats.get(f"idx{k}")
            if idx is None:
                x = interpolate(proj(x), 2, self.geometry)
            else:
                x = unpool(proj(x), idx, feats[f"conv{k}"].shape[-2:])
        return self.out(x)


def unpool(x: Tensor, indices: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Scatter ``x`` ``(N, C, h, w)`` to the arg-max positions ``indices`` (same shape, flat
    positions in a ``size`` plane): ``(N, C, *size)``, zeros elsewhere."""
    return F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=tuple(size))


def levels_between(
    backbone: nn.Module, from_stride: int, to_stride: int
) -> list[tuple[int, int | None]]:
    """The backbone's downsampling levels to undo between two strides, coarse to fine, with
    the channel count of their switches (``None`` where the level has none)."""
    out = []
    for k in sorted(backbone.levels, reverse=True):
        s_in, s_out = backbone.levels[k]
        if s_out > s_in and to_stride <= s_in and s_out <= from_stride:
            out.append((k, backbone.switch_channels.get(k)))
    return out


UPSAMPLE_MODES = ("deconv", "bilinear", "unpool")


def make_upsampler(
    mode: str,
    channels: int,
    *,
    backbone: nn.Module,
    from_stride: int,
    to_stride: int,
    geometry: str,
) -> nn.Module:
    """The upsampler of ``mode`` for a ``channels``-channel score map from ``from_stride``
    to ``to_stride``; ``forward(x, feats)``. Identity when the strides are equal."""
    factor = from_stride // to_stride
    if factor * to_stride != from_stride or factor < 1:
        raise ValueError(f"cannot upsample from stride {from_stride} to {to_stride}")
    if factor == 1:
        return Identity()
    if mode == "deconv":
        return Deconv(channels, factor, geometry)
    if mode == "bilinear":
        return Bilinear(factor, geometry)
    if mode == "unpool":
        return Unpool(
            channels, channels, levels_between(backbone, from_stride, to_stride), backbone.geometry
        )
    raise ValueError(f"unknown upsample mode {mode!r}")


class Identity(nn.Module):
    """No upsampling (equal strides, e.g. a dilated ResNet's stride-8 stages)."""

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        return x


def _replicate_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Replicates the edge row/column ``before``/``after`` times (0 or 1) on both spatial axes.
    Same values as ``F.pad(mode="replicate")``, written with slices and ``cat`` because the
    replicate-pad backward fails under torch.compile (a stride assertion in torch 2.13)."""
    for dim in (-1, -2):
        parts = [x]
        if before:
            parts.insert(0, x.narrow(dim, 0, 1))
        if after:
            parts.append(x.narrow(dim, x.shape[dim] - 1, 1))
        x = torch.cat(parts, dim=dim)
    return x
