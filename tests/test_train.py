"""The training engine: schedule, parameter groups, config precedence, data order, and short
end-to-end runs on tiny synthetic data (checkpoints, exact resume, kill -9, time budget)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.engine.config import TrainConfig, resolve_config
from fcnseg.engine.train import (
    EpochSampler,
    lr_at,
    param_groups,
    sample_seed,
    segmentation_loss,
)
from fcnseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure parts


def test_lr_at_warmup_poly_cosine():
    kw = dict(base_lr=1.0, total_steps=110, warmup_steps=10)
    assert lr_at(0, schedule="poly", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="poly", **kw) == pytest.approx(1.0)
    assert lr_at(10, schedule="poly", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="poly", **kw) == pytest.approx(0.5**0.9)
    assert lr_at(110, schedule="poly", **kw) == 0.0
    assert lr_at(500, schedule="poly", **kw) == 0.0
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(35, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(77, schedule="constant", **kw) == 1.0
    # no warmup: the first step runs at the base rate
    assert lr_at(0, base_lr=0.01, total_steps=100, warmup_steps=0, schedule="poly") == pytest.approx(0.01)
    with pytest.raises(ConfigError):
        lr_at(0, base_lr=1.0, total_steps=10, schedule="step")


def test_param_groups_no_decay_for_biases_and_norms():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1, bias=False))
    net[0].bias.requires_grad_(False)  # frozen parameters are left out
    groups = param_groups(net, 5e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(net[0].weight), id(net[2].weight)}
    assert no_decay == {id(net[1].weight), id(net[1].bias)}
    # an optimizer built on them decays only the conv weights
    opt = torch.optim.SGD(groups, lr=0.1)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    after = dict(net.named_parameters())
    assert not torch.equal(before["0.weight"], after["0.weight"])
    assert torch.equal(before["1.weight"], after["1.weight"])
    assert torch.equal(before["1.bias"], after["1.bias"])


def test_segmentation_loss_matches_cross_entropy_and_handles_all_ignored():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    target = torch.randint(0, 3, (2, 5, 7), generator=g)
    target[0, :2] = 255
    w = torch.tensor([0.5, 2.0, 1.0])
    assert segmentation_loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    assert segmentation_loss(logits, target, w).item() == pytest.approx(F.cross_entropy(logits, target, weight=w, ignore_index=255).item(), rel=1e-6)
    assert segmentation_loss(logits, torch.full_like(target, 255)).item() == 0.0


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    data = list(range(10))
    s = EpochSampler(data, num_replicas=1, rank=0, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(i for _, i in full) == data and all(e == 1 for e, _ in full)
    s.set_epoch(2)
    assert list(s) != [(2, i) for _, i in full]  # reshuffled each epoch
    s.set_epoch(1)
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6
    # two ranks split the same permutation between them
    shards = []
    for r in range(2):
        t = EpochSampler(data, num_replicas=2, rank=r, seed=3)
        t.set_epoch(1)
        shards.append([i for _, i in t])
    assert sorted(shards[0] + shards[1]) == data
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)


def test_seeded_dataset_gives_the_same_augmentation_in_any_order():
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import train_transforms
    from fcnseg.engine.train import SeededDataset

    tf = train_transforms(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ds = SeededDataset(build_dataset("synthetic", split="train", transforms=tf, size=48, length=4), seed=7)
    a = ds[(0, 1)]
    ds[(0, 2)], ds[(3, 1)]
    b = ds[(0, 1)]
    c = ds[(1, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])  # another epoch, another augmentation
    before = torch.get_rng_state()
    ds[(0, 3)]
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is left alone


def test_config_precedence_defaults_yaml_flags(tmp_path):
    from fcnseg.cli import build_parser
    from fcnseg.cli.train import overrides_from_args

    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 1e-4\nepochs: 7\nbatch_size: 3\ncrop: 96\ndata_options: {size: 64, length: 8}\n")
    args = build_parser().parse_args(["train", "--config", str(yml), "--epochs", "9", "--data-option", "length=16"])
    given = overrides_from_args(args)
    assert given == {"epochs": 9, "data_options": {"length": 16}}  # only what was typed
    cfg = resolve_config(given, config_file=args.config)
    assert cfg["epochs"] == 9  # flag beats YAML
    assert cfg["lr"] == 1e-4 and cfg["batch_size"] == 3  # YAML beats defaults ("1e-4" read as float)
    assert cfg["crop"] == [96, 96]
    assert cfg["data_options"] == {"size": 64, "length": 16}  # merged per key
    assert cfg["optimizer"] == TrainConfig().optimizer  # default
    assert resolve_config({})["crop"] == TrainConfig().crop


@pytest.mark.parametrize(
    "text, fragment",
    [("learning_rate: 0.1\n", "'learning_rate'"), ("epochs: many\n", "epochs must be a int"), ("optimizer: rmsprop\n", "optimizer")],
)
def test_bad_config_file_is_a_config_error(tmp_path, text, fragment):
    yml = tmp_path / "bad.yaml"
    yml.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        resolve_config({}, config_file=yml)


def test_every_shipped_config_resolves():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        cfg = resolve_config({}, config_file=f)
        assert cfg["model"] and cfg["epochs"] >= 1, f
