"""fcnseg.models.diagram: the stages a diagram draws are the model's real outputs."""

from __future__ import annotations

import pytest
import torch

from fcnseg.models import build_model
from fcnseg.models.diagram import draw_architecture, trace_stages

SIZE = (64, 96)


def _real_outputs(model, size):
    """Shapes of the backbone's maps and of each head module's output, from plain hooks."""
    got: dict[str, tuple] = {}

    def hook(name):
        def h(module, args, out):
            if isinstance(out, dict):
                for k, v in out.items():
                    got[f"backbone.{k}"] = tuple(v.shape[1:])
            else:
                got.setdefault(name, tuple(out.shape[1:]))
        return h

    handles = [child.register_forward_hook(hook(name)) for name, child in model.named_children()]
    with torch.no_grad():
        y = model.eval()(torch.zeros(1, 3, *size))
    for h in handles:
        h.remove()
    return got, tuple(y.shape[1:])


@pytest.mark.parametrize(("name", "adds", "skips"), [
    ("fcn32s", 0, ()),
    ("fcn16s", 1, (("upscore2", "score_pool4"),)),
    ("fcn8s", 2, (("upscore2", "score_pool4"), ("upscore_pool4", "score_pool3"))),
    ("fcn4s", 3, (("upscore2", "score_pool4"), ("upscore_pool4", "score_pool3"), ("upscore_pool3", "score_pool2"))),
    ("seed", 3, ()),
])
def test_traced_stages_are_the_models_real_shapes_and_skips(name, adds, skips):
    torch.manual_seed(0)
    model = build_model(name, backbone="resnet18", num_classes=5)
    stages = trace_stages(model, SIZE)
    real, out_shape = _real_outputs(model, SIZE)
    assert stages[0].kind == "input" and stages[0].shape == (3, *SIZE)
    assert stages[-1].kind == "output" and stages[-1].shape == out_shape == (5, *SIZE)
    for s in stages:
        if s.kind == "encoder":
            for key in s.name.split(" = "):
                assert s.shape == real[f"backbone.{key}"], (name, s.name)
            assert s.stride == SIZE[0] / s.shape[1]
        elif s.kind == "layer":
            assert s.shape == real[s.name], (name, s.name)
    assert sum(s.kind == "add" for s in stages) == adds
    # each '+' of an FCN adds the upsampled coarser scores and the finer map's score layer
    fused = [tuple(sorted(stages[i].name for i in s.inputs)) for s in stages if s.kind == "add"]
    for pair in skips:
        assert tuple(sorted(pair)) in fused, (name, fused)
    # the data flow reaches the output from the input
    seen, todo = set(), [len(stages) - 1]
    while todo:
        i = todo.pop()
        seen.add(i)
        todo += [j for j in stages[i].inputs if j not in seen]
    assert 0 in seen


def test_the_seed_nets_adds_are_the_tutorials_three_skips():
    stages = trace_stages(build_model("seed", backbone="resnet18", num_classes=3), SIZE)
    taps = [stages[j].name.split(" = ") for s in stages if s.kind == "add" for j in s.inputs if stages[j].kind == "encoder"]
    # Keras' block5_conv3, block4_conv3, block3_conv3, in the order the decoder adds them
    # (ResNet's maps carry all their names: one tensor is layer3, conv5 and pool4)
    assert [next(n for n in names if n.startswith("conv")) for names in taps] == ["conv5", "conv4", "conv3"]


def test_draw_architecture_writes_a_png(tmp_path):
    path = tmp_path / "fcn8s.png"
    stages = draw_architecture(build_model("fcn8s", backbone="resnet18", num_classes=3), path, size=SIZE, title="FCN-8s")
    assert path.stat().st_size > 10_000
    assert stages[-1].shape == (3, *SIZE)


def test_a_model_without_a_backbone_is_refused():
    with pytest.raises(ValueError, match="no backbone"):
        trace_stages(torch.nn.Conv2d(3, 2, 1))
