"""Architecture diagrams drawn from a model's own modules and the shapes of a real forward pass.

:func:`trace_stages` runs the model once on a dummy input and records, for the backbone's
feature maps the head reads and for each of the head's modules and additions, the output
shape ``(C, h, w)``, the stride (input size / map size) and which stages fed it. The data
flow is taken from the tensors themselves (a ``TorchFunctionMode`` follows every tensor the
head touches outside its modules: crops, padding and activations pass their source on; an
addition of two traced tensors is a "+" stage), so a diagram cannot show a skip the model
does not compute. :func:`draw_architecture` lays the stages out as a U (encoder on top,
left to right by stride; per-tap layers in the middle; the decoder below, right to left)
and writes a PNG.

    from fcnseg import build_model
    from fcnseg.models.diagram import draw_architecture
    draw_architecture(build_model("fcn8s", backbone="vgg16", num_classes=21), "fcn8s.png")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.__iadd__, Tensor.add_}


@dataclass
class Stage:
    """One box of the diagram: ``kind`` is "input", "encoder" (a backbone feature map),
    "layer" (one of the head's modules), "add" or "output"; ``shape`` is (C, h, w) of its
    output for the traced input; ``inputs`` index the stages that fed it."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    stride: float
    inputs: list[int] = field(default_factory=list)
    op: str = ""


def _describe(module: nn.Module, factor: float) -> str:
    """A short label of what a head module does (e.g. "1x1 conv", "upsample x2 (deconv 4x4)")."""
    if isinstance(module, nn.ConvTranspose2d):
        k, s = module.kernel_size[0], module.stride[0]
        return f"transposed conv {k}x{k} s{s}"
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0]
        return f"{k}x{k} conv"
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    how = type(module).__name__.lower()
    mode = getattr(module, "mode", None)
    if isinstance(mode, str):
        how = mode
    if factor > 1.01:
        inner = f", {_describe(convs[-1], 1.0)}" if convs and how != "deconv" else ""
        if convs and isinstance(convs[0], nn.ConvTranspose2d):
            k = convs[0].kernel_size[0]
            return f"upsample x{factor:g} (transposed conv {k}x{k})"
        return f"upsample x{factor:g} ({how}{inner})"
    return _describe(convs[-1], 1.0) if convs else how


def trace_stages(model: nn.Module, size: tuple[int, int] = (224, 224), in_channels: int = 3) -> list[Stage]:
    """Runs ``model`` on zeros of ``(1, in_channels, *size)`` and returns its stages in the
    order they ran (input first, output last). The model needs a ``backbone`` child that
    returns a dict of feature maps (fcnseg's FCN and seed models do)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no backbone module to trace")
    H, W = size
    stages: list[Stage] = [Stage("input", "input", (in_channels, H, W), 1.0)]
    owner: dict[int, int] = {}  # id(tensor) -> stage index
    keep: list[Tensor] = []  # the traced tensors stay alive, so their ids stay unique
    depth = [0]
    pending: dict[int, list[int]] = {}

    def tag(t: Tensor, index: int) -> None:
        owner[id(t)] = index
        keep.append(t)

    def sources(obj) -> list[int]:
        found: list[int] = []
        if isinstance(obj, Tensor):
            if id(obj) in owner:
                found.append(owner[id(obj)])
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                found += sources(o)
        return found

    def shape_of(t: Tensor) -> tuple[int, int, int]:
        return (int(t.shape[1]), int(t.shape[2]), int(t.shape[3]))

    def stride_of(t: Tensor) -> float:
        return H / int(t.shape[-2])

    def pre(module, args):
        pending[id(module)] = sources(args)
        depth[0] += 1

    def post_backbone(module, args, out):
        depth[0] -= 1
        named: dict[int, list[str]] = {}
        for key, t in out.items():
            if isinstance(t, Tensor) and t.is_floating_point() and t.dim() == 4:
                named.setdefault(id(t), []).append(key)
        for t in out.values():
            if isinstance(t, Tensor) and id(t) in named and id(t) not in owner:
                stages.append(Stage(" = ".join(named[id(t)]), "encoder", shape_of(t), stride_of(t), [0]))
                tag(t, len(stages) - 1)

    def make_post(name: str):
        def post(module, args, out):
            depth[0] -= 1
            srcs = pending.pop(id(module), [])
            params = any(True for _ in module.parameters())
            first = next((a for a in args if isinstance(a, Tensor)), None)
            if not params and first is not None and tuple(first.shape) == tuple(out.shape) and srcs:
                tag(out, srcs[0])  # an activation or identity: the source passes through
                return
            factor = (stride_of(first) / stride_of(out)) if first is not None else 1.0
            stages.append(Stage(name, "layer", shape_of(out), stride_of(out), srcs, _describe(module, factor)))
            tag(out, len(stages) - 1)

        return post

    class Flow(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if depth[0] == 0 and isinstance(out, Tensor) and out.dim() == 4:
                srcs = sources(list(args) + list((kwargs or {}).values()))
                if func in _ADDS and len(set(srcs)) >= 2:
                    stages.append(Stage("+", "add", shape_of(out), stride_of(out), sorted(set(srcs), key=srcs.index)))
                    tag(out, len(stages) - 1)
                elif srcs and id(out) not in owner:
                    tag(out, srcs[0])
            return out

    handles = [backbone.register_forward_pre_hook(pre), backbone.register_forward_hook(post_backbone)]
    for name, child in model.named_children():
        if child is not backbone:
            handles.append(child.register_forward_pre_hook(pre))
            handles.append(child.register_forward_hook(make_post(name)))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_channels, H, W)
        tag(x, 0)
        with torch.no_grad(), Flow():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    src = owner.get(id(y))
    stages.append(Stage("output", "output", shape_of(y), stride_of(y), [] if src is None else [src], "logits"))
    # keep the encoder maps the head read (and the input); drop the backbone's unused taps
    used = {i for s in stages for i in s.inputs}
    keep_index = [i for i, s in enumerate(stages) if s.kind != "encoder" or i in used]
    remap = {old: new for new, old in enumerate(keep_index)}
    out_stages = []
    for i in keep_index:
        s = stages[i]
        s.inputs = [remap[j] for j in s.inputs if j in remap]
        out_stages.append(s)
    return out_stages


_COLOURS = {"input": "#dddddd", "encoder": "#c6dbef", "layer": "#fdd0a2", "add": "#ffffff", "output": "#c7e9c0"}


def draw_architecture(
    model: nn.Module,
    path: str | os.PathLike | None = None,
    *,
    size: tuple[int, int] = (224, 224),
    title: str = "",
    ax=None,
):
    """Draws ``model``'s stages (:func:`trace_stages` on a ``size`` input) as boxes labelled
    with the stage's name, what it does, channels, stride and map size; arrows follow the
    traced data flow. Writes ``path`` (PNG) when given; draws into ``ax`` when given.
    Returns the stages."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    stages = trace_stages(model, size)
    strides = sorted({round(s.stride, 3) for s in stages})
    # rows: 2 encoder (and input), 1 per-tap layers (fed only by one encoder map, same stride), 0 decoder
    rows = []
    for s in stages:
        if s.kind in ("input", "encoder"):
            rows.append(2)
        elif s.kind == "layer" and s.inputs and all(stages[j].kind == "encoder" for j in s.inputs) and \
                round(stages[s.inputs[0]].stride, 3) == round(s.stride, 3):
            rows.append(1)
        else:
            rows.append(0)
    slots: dict[tuple[int, float], list[int]] = {}
    for i, s in enumerate(stages):
        slots.setdefault((rows[i], round(s.stride, 3)), []).append(i)
    width = {st: max(len(v) for (r, k), v in slots.items() if k == st) for st in strides}
    left, x0 = {}, 0.0
    for st in strides:
        left[st] = x0
        x0 += width[st]
    pos = {}
    for (r, st), members in slots.items():
        if r == 0:
            members = members[::-1]  # the decoder runs right to left: first-run stage on the right
        offset = (width[st] - len(members)) / 2
        for j, i in enumerate(members):
            pos[i] = (left[st] + offset + j + 0.5, r)
    own = ax is None
    if own:
        fig = Figure(figsize=(max(6.0, 1.55 * x0), 4.6))
        ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    bw, bh = 0.88, 0.72
    for i, s in enumerate(stages):
        x, y = pos[i]
        if s.kind == "add":
            ax.add_patch(FancyBboxPatch((x - 0.13, y - 0.13), 0.26, 0.26, boxstyle="circle,pad=0", fc="white", ec="black", lw=1))
            ax.text(x, y, "+", ha="center", va="center", fontsize=13, fontweight="bold")
            continue
        ax.add_patch(FancyBboxPatch((x - bw / 2, y - bh / 2), bw, bh, boxstyle="round,pad=0.02",
                                    fc=_COLOURS[s.kind], ec="#444444", lw=0.8))
        c, h, w = s.shape
        lines = [s.name if s.kind != "encoder" else f"{s.name}"]
        if s.op:
            lines += s.op.replace(" (", "\n(").split("\n")
        lines.append(f"{c} ch, 1/{s.stride:g}" if s.stride != 1 else f"{c} ch, full size")
        lines.append(f"{h} x {w}")
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=8 if len(lines) < 5 else 7.2, linespacing=1.15)
    # the backbone is a chain: draw its maps in stride order, each fed by the one before
    chain = [i for i, s in enumerate(stages) if s.kind in ("input", "encoder")]
    chain.sort(key=lambda i: (stages[i].stride, i))
    feeds = {i: list(s.inputs) for i, s in enumerate(stages)}
    for a, b in zip(chain, chain[1:], strict=False):
        feeds[b] = [a]

    def border(i: int, toward: tuple[float, float]) -> tuple[float, float]:
        """Where the line from stage i's centre toward a point leaves its box (or circle)."""
        (x, y), (tx, ty) = pos[i], toward
        dx, dy = tx - x, ty - y
        if stages[i].kind == "add":
            n = max((dx * dx + dy * dy) ** 0.5, 1e-9)
            return x + 0.14 * dx / n, y + 0.14 * dy / n
        t = min((bw / 2 + 0.02) / abs(dx) if dx else float("inf"), (bh / 2 + 0.02) / abs(dy) if dy else float("inf"))
        return x + t * dx, y + t * dy

    for i, s in enumerate(stages):
        for j in feeds[i]:
            a, b = border(j, pos[i]), border(i, pos[j])
            dashed = s.kind == "encoder"
            ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=0.9,
                                         color="#777777" if dashed else "#222222",
                                         linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))
    backbone = getattr(model, "config", {}).get("backbone", "backbone") if isinstance(getattr(model, "config", None), dict) else "backbone"
    ax.text(0.02, 2.48, f"encoder: {backbone} feature maps the head reads (dashed: the layers in between)",
            fontsize=7.5, color="#335577", va="bottom")
    for st in strides:
        ax.text(left[st] + width[st] / 2, -0.55, f"stride {st:g}", ha="center", fontsize=7.5, color="#666666")
    ax.set_xlim(-0.05, x0 + 0.05)
    ax.set_ylim(-0.7, 2.6)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    if own and path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp.png")
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
        os.replace(tmp, path)
    return stages
