"""FCN-32s/16s/8s and seed: shapes at odd sizes, initialisation, alignment, configuration."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fcnseg import build_model, list_models
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.upsample import UPSAMPLE_MODES

MODELS = ("fcn32s", "fcn16s", "fcn8s", "seed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the box is shared: two threads fighting other jobs are slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick_model(name: str, **kw) -> nn.Module:
    """``build_model`` on the meta device, then materialised on CPU with cheap values:
    the real modules and forward code, without paying ~1 s of init for fc6/fc7. Only for
    tests about shapes; initialisation is tested on real builds below."""
    with torch.device("meta"):
        model = build_model(name, **kw)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for n, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            if t.is_floating_point():
                t.fill_(1.0 if n.endswith(("running_var", "bn1.weight")) else 0.01)
            else:
                t.zero_()
    return model


def test_registry():
    assert list_models() == sorted(MODELS)


SWEEP = list(itertools.product(MODELS, BACKBONES, UPSAMPLE_MODES))


@pytest.mark.parametrize(("name", "backbone", "upsample"), SWEEP)
def test_output_size_odd_input(name, backbone, upsample):
    model = quick_model(name, backbone=backbone, num_classes=3, upsample=upsample)
    x = torch.randn(1, 3, 33, 45)
    with torch.no_grad():
        for train in (True, False):
            model.train(train)
            y = model(x)
            assert y.shape == (1, 3, 33, 45)
            assert torch.isfinite(y).all()
