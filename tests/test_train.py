"""The training engine: schedule, parameter groups, config precedence, data order, and short
end-to-end runs on tiny synthetic data (checkpoints, exact resume, kill -9, time budget)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.config import TrainConfig, resolve_config
from fcnseg.data.sampling import EpochSampler, sample_seed
from fcnseg.errors import ConfigError
from fcnseg.training.losses import (
    lovasz_softmax_loss,
    segmentation_loss,
    upsampled_segmentation_loss,
)
from fcnseg.training.schedule import lr_at
from fcnseg.training.step import param_groups

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """These workloads are tiny; one thread per process keeps them fast and steady even when
    the machine is shared (OpenMP threads spin badly when the cores are oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses
    yield
    torch.set_num_threads(threads)


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


def test_hard_pixel_loss_averages_the_hardest_fraction():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 10, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 10), generator=g)
    target[1, :3] = 255  # 30 of the 120 pixels unlabelled
    w = torch.tensor([1.0, 3.0, 0.5, 2.0])
    per = F.cross_entropy(logits, target, weight=w, ignore_index=255, reduction="none").flatten()
    top = per.sort(descending=True).values
    for frac, k in ((0.25, 30), (0.5, 60), (0.1, 12)):
        loss = segmentation_loss(logits, target, w, hard_pixels=frac)
        assert loss.item() == pytest.approx(top[:k].mean().item(), rel=1e-5)  # two summation orders
    # the easy pixels get no gradient
    segmentation_loss(logits, target, w, hard_pixels=0.25).backward()
    grads = logits.grad.abs().sum(1).flatten()
    hard = per >= top[29]
    assert (grads[~hard] == 0).all() and (grads[hard] > 0).all()
    # 1.0 is the plain (weighted-average) loss; asking for more pixels than are labelled
    # (0.9 of 120 > 90) keeps the labelled ones, never the unlabelled
    assert segmentation_loss(logits, target, w, 1.0).item() == pytest.approx(F.cross_entropy(logits, target, weight=w, ignore_index=255).item(), rel=1e-6)
    assert segmentation_loss(logits, target, hard_pixels=0.9).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6
    )
    assert segmentation_loss(logits, torch.full_like(target, 255), hard_pixels=0.5).item() == 0.0


@pytest.mark.parametrize("model_name", ["fcn32s", "fcn8s", "fcn4s"])
def test_upsampled_loss_is_the_full_resolution_loss_in_value_and_gradient(model_name):
    """The loss from a model's coarse scores (upsampled a chunk of images at a time inside the
    loss) equals segmentation_loss on its full-resolution logits, and so do the parameters'
    gradients, with and without class weights and hard-pixel mining, for chunks that do and
    do not divide the batch (and the default, by pixel count); unlabelled pixels give none."""
    from functools import partial

    from fcnseg.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, backbone="resnet18", num_classes=4, upsample="bilinear")
    for prm in model.parameters():
        if prm.dim() > 1:
            nn.init.normal_(prm, std=0.05)  # the zero-initialised score layers would give zero gradients below them
    x = torch.randn(3, 3, 64, 96)
    target = torch.randint(0, 4, (3, 64, 96))
    target[0, :20] = 255
    w = torch.tensor([1.0, 3.0, 0.5, 2.0])
    assert model.fixed_upsampling
    scores = model(x, coarse=True)
    stride = {"fcn32s": 32, "fcn8s": 8, "fcn4s": 4}[model_name]
    assert scores.shape == (3, 4, 64 // stride, 96 // stride)
    assert torch.equal(model.upsample_scores(scores, (64, 96)), model(x))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([prm.grad.flatten() for prm in model.parameters()])

    for weight, hard, chunk in ((None, 1.0, 1), (w, 1.0, 2), (w, 0.3, 1), (None, 0.3, 3), (w, 0.3, 5), (w, 0.3, None)):
        ref = segmentation_loss(model(x), target, weight, hard)
        ref_grad = grads(ref)
        loss = upsampled_segmentation_loss(model(x, coarse=True), target, partial(model.upsample_scores, size=(64, 96)), weight, hard, chunk)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)  # 18k pixels summed by chunk or at once
        got = grads(loss)
        assert ref_grad.abs().max() > 0
        assert (got - ref_grad).abs().max() <= 1e-5 * ref_grad.abs().max()
    # all pixels unlabelled: 0 and no gradient, as segmentation_loss
    scores = model(x, coarse=True)
    loss = upsampled_segmentation_loss(scores, torch.full_like(target, 255), partial(model.upsample_scores, size=(64, 96)))
    assert loss.item() == 0.0 and grads(loss).abs().max() == 0


def test_learned_last_upsampling_has_no_coarse_loss():
    """With deconvolutions the last upsampling learns: the model refuses upsample_scores and
    the training step computes the loss on full-resolution logits; with bilinear it uses the
    coarse scores (not with the Lovász term, which needs the logits), and two steps on them
    give the same losses and weights as two steps on the full-resolution logits."""
    from fcnseg.models import build_model
    from fcnseg.precision import resolve_precision
    from fcnseg.training.step import build_train_step

    cpu, fp32 = torch.device("cpu"), resolve_precision("fp32", "cpu")
    cfg = resolve_config({"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0})
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="deconv")
    assert not model.fixed_upsampling
    with pytest.raises(ValueError, match="learns"):
        model.upsample_scores(torch.zeros(1, 3, 8, 8), (64, 64))
    assert not build_train_step(model, cfg, device=cpu, precision=fp32, num_classes=3).coarse_loss
    assert not build_train_step(build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear"), dataclasses.replace(cfg, lovasz=0.5), device=cpu, precision=fp32, num_classes=3).coarse_loss
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    runs = {}
    for coarse in (True, False):
        torch.manual_seed(0)
        model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear")
        for prm in model.parameters():
            if prm.dim() > 1:
                nn.init.normal_(prm, std=0.05)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        step = build_train_step(model, cfg, device=cpu, precision=fp32, num_classes=3)
        assert step.coarse_loss
        step.coarse_loss = coarse
        loss = step([(x, y)]).item()
        runs[coarse] = (loss, torch.cat([p.detach().flatten() for p in model.parameters()]) - before)
    # one step (at lr 0.1 a second one already diverges, and amplifies the last bits in which
    # the kernels of AVX2 and AVX-512 CPUs differ): the same loss and the same update
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    update = runs[False][1].abs().max()
    assert update > 0.01  # the step changed the model
    assert (runs[True][1] - runs[False][1]).abs().max() <= 1e-4 * update


def _lovasz_by_definition(prob: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The Lovász extension written out from the paper's definition (per class, loops): for
    errors m sorted down, sum_i m_i (J(first i mistakes) - J(first i-1)), with the Jaccard
    loss of a mistake set M being 1 - (|gt| - |M in gt|) / (|gt| + |M outside gt|)."""
    losses = []
    for c in range(k):
        gt = labels == c
        if not gt.any():
            continue
        m = (gt.double() - prob[:, c].double()).abs()
        order = sorted(range(len(m)), key=lambda i: -m[i].item())
        total, prev, in_gt, out_gt = 0.0, 0.0, 0, 0
        for i in order:
            in_gt, out_gt = in_gt + int(gt[i]), out_gt + int(not gt[i])
            j = 1 - (int(gt.sum()) - in_gt) / (int(gt.sum()) + out_gt)
            total += m[i].item() * (j - prev)
            prev = j
        losses.append(total)
    return sum(losses) / len(losses)


def test_lovasz_softmax_matches_its_definition_and_one_minus_iou_on_hard_predictions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)  # class 3 absent: not averaged
    target[0, 0] = 255
    keep = target.flatten() != 255
    prob = logits.permute(0, 2, 3, 1).reshape(-1, 4).softmax(1)[keep]
    want = _lovasz_by_definition(prob, target.flatten()[keep], 4)
    assert lovasz_softmax_loss(logits, target, max_pixels=None).item() == pytest.approx(want, rel=1e-5)
    # confident predictions: the loss is exactly 1 - the mean IoU over the classes present
    pred = torch.randint(0, 4, (2, 5, 6), generator=g)
    hard = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 60
    ious = [((pred == c) & (target == c)).sum() / (((pred == c) | (target == c)) & (target != 255)).sum() for c in range(3)]
    assert lovasz_softmax_loss(hard, target, max_pixels=None).item() == pytest.approx(1 - torch.stack(ious).mean().item(), abs=1e-6)
    assert lovasz_softmax_loss(hard, torch.where(target == 255, 255, pred), max_pixels=None).item() == pytest.approx(0.0, abs=1e-6)
    assert lovasz_softmax_loss(logits, torch.full_like(target, 255)).item() == 0.0


def test_lovasz_softmax_sample_is_labelled_pixels_and_its_gradient_lowers_the_loss():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 5, (2, 40, 50), generator=g)
    target[:, :20] = 255  # half unlabelled
    logits = torch.zeros(2, 5, 40, 50, requires_grad=True)
    loss = lovasz_softmax_loss(logits, target, max_pixels=1000, generator=g)
    loss.backward()
    touched = logits.grad.abs().sum(1) > 0
    # only sampled labelled pixels get gradient: at most 1000 of the 2000 labelled
    assert not touched[:, :20].any() and 300 < touched[:, 20:].sum() <= 1000
    # a 1x1 conv on noisy one-hot features, trained on the sampled loss alone, drives the
    # full-pixel loss (the 1 - mean IoU surrogate) from 0.8 (uniform) well down
    feats = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float() + 0.3 * torch.randn(2, 5, 40, 50, generator=g)
    head = nn.Conv2d(5, 5, 1)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    before = lovasz_softmax_loss(head(feats), target, max_pixels=None).item()
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        lovasz_softmax_loss(head(feats), target, max_pixels=1000, generator=g).backward()
        opt.step()
    assert before == pytest.approx(0.8, abs=1e-6)
    assert lovasz_softmax_loss(head(feats), target, max_pixels=None).item() < 0.25  # 0.14 measured


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
    from fcnseg.data.sampling import SeededDataset
    from fcnseg.data.transforms import train_transforms

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

    # the same batches whichever process loads them
    def batches(workers):
        sampler = EpochSampler(ds, num_replicas=1, rank=0, seed=7)
        sampler.set_epoch(2)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)
        return [b[0] for b in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


def test_config_precedence_defaults_yaml_flags(tmp_path):
    from fcnseg.cli import build_parser
    from fcnseg.cli.train import overrides_from_args

    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 1e-4\nepochs: 7\nbatch_size: 3\ncrop: 96\ndata_options: {size: 64, length: 8}\n")
    args = build_parser().parse_args(["train", "--config", str(yml), "--epochs", "9", "--data-option", "length=16"])
    given = overrides_from_args(args)
    assert given == {"epochs": 9, "data_options": {"length": 16}}  # only what was typed
    cfg = resolve_config(given, config_file=args.config)
    assert cfg.epochs == 9  # flag beats YAML
    assert cfg.lr == 1e-4 and cfg.batch_size == 3  # YAML beats defaults ("1e-4" read as float)
    assert cfg.crop == [96, 96]
    assert cfg.data_options == {"size": 64, "length": 16}  # merged per key
    assert cfg.optimizer == TrainConfig().optimizer  # default
    assert resolve_config({}).crop == TrainConfig().crop
    # --max-minutes 0 lifts the file's time budget (the run then lasts --epochs); a number sets it
    yml.write_text("max_minutes: 30\nepochs: 1000\n")
    for flag, minutes in (["--max-minutes", "0"], None), (["--max-minutes", "2.5"], 2.5), ([], 30):
        args = build_parser().parse_args(["train", "--config", str(yml), "--epochs", "104", *flag])
        cfg = resolve_config(overrides_from_args(args), config_file=yml)
        assert cfg.max_minutes == minutes and cfg.epochs == 104
    assert resolve_config({"max_minutes": 0}, config_file=yml).max_minutes is None  # the library alike
    args = build_parser().parse_args(["train", "--scale", "0.75", "1.25", "--eval-tta", "flip,scales=0.75,1", "--class-weights", "median_sqrt"])
    assert overrides_from_args(args) == {"scale": [0.75, 1.25], "eval_tta": "flip,scales=0.75,1", "class_weights": "median_sqrt"}
    assert resolve_config(overrides_from_args(args)).scale == [0.75, 1.25]
    # progressive stages: the flag form and the YAML form resolve to the same checked dicts
    args = build_parser().parse_args(["train", "--progressive", "0.25:96x128:0.3-0.5", "0.5:144X192:0.5-0.75"])
    stages = resolve_config(overrides_from_args(args)).progressive
    assert stages == [{"until": 0.25, "crop": [96, 128], "scale": [0.3, 0.5]}, {"until": 0.5, "crop": [144, 192], "scale": [0.5, 0.75]}]
    yml.write_text("progressive:\n  - {until: 0.25, crop: [96, 128], scale: [0.3, 0.5]}\n  - {until: 0.5, crop: [144, 192], scale: [0.5, 0.75]}\n")
    assert resolve_config({}, config_file=yml).progressive == stages
    assert resolve_config({}).progressive == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("learning_rate: 0.1\n", "'learning_rate'"),
        ("epochs: many\n", "epochs must be a int"),
        ("max_minutes: -5\n", r"max_minutes must be > 0 \(or 0: no time budget\), got -5"),
        ("optimizer: rmsprop\n", "optimizer"),
        ("eval_tta: flip,scales=big\n", "TTA scale 'big'"),  # caught before training, not after
        ("eval_crf: appearance=strong\n", "CRF spec .appearance=strong.: appearance=.strong. is not a number"),
        ("hard_pixels: 0\n", r"hard_pixels is the fraction of pixels the loss keeps: in \(0, 1\], got 0"),
        ("hard_pixels: 1.5\n", "hard_pixels is the fraction"),
        ("lovasz: -1\n", "weight_decay, aux_loss and lovasz must be >= 0"),
        ("eval_every: -1\n", "eval_every must be >= 0, got -1"),
        ("context: ppm\n", r"context was removed from fcnseg .*; drop context: 'ppm' from .*bad.yaml"),
        ("model: fpn\n", r"model 'fpn' was removed from fcnseg .*; use fcn4s"),
        ("backbone: resnet10\n", r"backbone 'resnet10' was removed from fcnseg .*; use resnet18"),
        ("color_jitter: 1.2\n", r"color_jitter scales brightness, contrast and saturation by factors in \[1 - S, 1 \+ S\]: S in \[0, 1\), got 1.2"),
        ("copy_paste: -0.5\n", r"copy_paste is the probability that a training crop receives pasted pixels: in \[0, 1\], got -0.5"),
        ("balanced_crops: 0.5\n", r"balanced_crops was removed from fcnseg \(an ablation measured no gain; docs/experiments has the figures\); drop balanced_crops: 0.5 from"),
        ("freeze_schedule: ['0.5:backbone.layer1']\n", "freeze_schedule was removed"),
        ("schedule_unit: pixels\n", "schedule_unit was removed"),
        ("area_for_downscale: false\n", "area_for_downscale was removed"),
        ("paste_weights: true\n", "paste_weights was removed"),
        ("upsample: nearest\n", "unknown upsample 'nearest'; choose one of deconv, bilinear, unpool"),
        ("ema: 1\n", r"ema is the decay of the weight average per step: in \[0, 1\) \(0: off, e.g. 0.999\), got 1.0"),
        ("progressive: [0.5]\n", r"a progressive stage is \{until: F, crop: \[H, W\], scale: \[MIN, MAX\]\} or 'F:HxW:MIN-MAX'"),
        ("progressive: [{until: 0.5, crop: [32, 32]}]\n", "a progressive stage is"),  # scale missing
        ("progressive: [{until: 1.0, crop: [32, 32], scale: [1, 1]}]\n", "with 0 < F < 1"),
        ("progressive: [{until: 0.5, crop: [32, 32], scale: [1, 0.5]}]\n", "0 < MIN <= MAX"),
        ("progressive: [{until: 0.6, crop: 32, scale: [1, 1]}, {until: 0.3, crop: 48, scale: [1, 1]}]\n", r"in order of `until`.*\[0.6, 0.3\]"),
    ],
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
        assert cfg.model and cfg.epochs >= 1, f


def test_removed_options_at_their_off_value_still_load(tmp_path, capsys):
    """A config or checkpoint of an earlier version names every removed key at its "off"
    value: those load (the key is dropped); a removed flag is refused by the parser, and a
    checkpoint trained with a removed option gets the one-line error on --resume."""
    from fcnseg.cli import main
    from fcnseg.config import REMOVED

    yml = tmp_path / "old.yaml"
    yml.write_text("schedule_unit: step\nfreeze_schedule: []\npaste_weights: false\nbalanced_crops: 0\narea_for_downscale: true\ncontext: null\nepochs: 3\n")
    cfg = resolve_config({}, config_file=yml)
    assert cfg.epochs == 3 and not set(REMOVED) & set(cfg.to_dict())
    old_checkpoint_config = {**resolve_config({}).to_dict(), **REMOVED}
    assert resolve_config({}, base=old_checkpoint_config) == resolve_config({})
    with pytest.raises(ConfigError, match="balanced_crops was removed .* from the checkpoint's config"):
        resolve_config({}, base={**old_checkpoint_config, "balanced_crops": 0.5})
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--balanced-crops", "0.5"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --balanced-crops" in capsys.readouterr().err


def test_train_flags_come_from_the_config_definition():
    """Every TrainConfig field with a flag is a `fcnseg train` flag in its group, with the
    field's help, metavar and choices; a flag given sets that key and nothing else."""
    import argparse
    import dataclasses

    from fcnseg.cli import build_parser
    from fcnseg.cli.train import overrides_from_args
    from fcnseg.config import CLASS_WEIGHTS, GROUPS, OPTIMIZERS

    parser = build_parser()
    train_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    by_dest = {a.dest: (a, g.title) for g in train_parser._action_groups for a in g._group_actions}
    flagged = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag", "") is not None]
    assert len(flagged) >= 50
    for f in flagged:
        action, group = by_dest[f.name]
        assert group == f.metadata["group"] and group in GROUPS
        assert action.help == f.metadata.get("help") and action.option_strings[0] == "--" + f.name.replace("_", "-")
    assert by_dest["optimizer"][0].choices == OPTIMIZERS and by_dest["class_weights"][0].choices == CLASS_WEIGHTS
    assert isinstance(by_dest["hflip"][0], argparse.BooleanOptionalAction)
    args = parser.parse_args(["train", "--no-hflip", "--crop", "64", "48", "--resume", "--log-every", "5"])
    assert overrides_from_args(args) == {"hflip": False, "crop": [64, 48], "resume": "auto", "log_every": 5}
    # every switch has both spellings: a plan (rotate90, preload) or a config file may have turned it on
    assert all(isinstance(by_dest[f.name][0], argparse.BooleanOptionalAction) for f in flagged if by_dest[f.name][0].nargs == 0)
    assert overrides_from_args(parser.parse_args(["train", "--no-rotate90", "--no-preload"])) == {"rotate90": False, "preload": False}
    assert "rotate90" not in overrides_from_args(parser.parse_args(["train"]))


def test_load_matching_starts_fcn16s_from_fcn32s():
    from fcnseg.models import build_model
    from fcnseg.weights import load_matching

    kw = dict(backbone="resnet18", num_classes=3, upsample="bilinear")
    src = build_model("fcn32s", **kw)
    with torch.no_grad():
        src.score_fr.weight.normal_()
    dst = build_model("fcn16s", **kw)
    loaded, left, unused = load_matching(dst, src.state_dict())
    assert "score_fr.weight" in loaded and "backbone.conv1.weight" in loaded
    assert torch.equal(dst.score_fr.weight, src.score_fr.weight)
    assert {n for n in left if n.startswith("score_pool4")} == {"score_pool4.weight", "score_pool4.bias"}
    assert not any(n.startswith("backbone.") for n in left) and not unused
    assert dst.score_pool4.weight.abs().sum() == 0  # the new skip stays at its zero init


def test_overfit_one_batch():
    """On one fixed batch the loss falls by more than half in 20 steps, and well below the
    loss of the best constant prediction (the class prior), so it learned where things are."""
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.models import build_model
    from fcnseg.training.step import build_optimizer

    ds = build_dataset("synthetic", split="train", size=64, length=2, transforms=eval_transforms(mean=(0.5,) * 3, std=(0.25,) * 3))
    x = torch.stack([ds[i][0] for i in range(2)])
    y = torch.stack([ds[i][1] for i in range(2)])
    prior = torch.bincount(y.flatten(), minlength=3).double() / y.numel()
    prior_loss = float(-(prior[prior > 0] * prior[prior > 0].log()).sum())
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear")
    opt = build_optimizer(param_groups(model, 0.0), name="adamw", lr=2e-3, momentum=0.9, device=torch.device("cpu"))
    losses = []
    for _ in range(20):
        loss = segmentation_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < 0.6 * prior_loss, (losses, prior_loss)


# --------------------------------------------------------------------------- runs


def tiny(out: Path, **kw) -> dict:
    """A run small enough for the test suite: 8 images of 64x64, 2 steps an epoch."""
    cfg = dict(
        data="synthetic", data_options={"size": 64, "length": 8}, model="fcn8s", backbone="resnet18",
        upsample="bilinear", crop=[64, 64], batch_size=4, epochs=1, warmup_steps=2, log_every=1,
        eval_batch_size=4, num_samples=1, tensorboard=False, out=str(out),
        device="cpu",  # bitwise-exact resume is asserted on the CPU (GPU kernels may not be deterministic)
    )
    cfg.update(kw)
    return cfg


def losses(run: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["event"] == "train"}


def keep_step_checkpoints(*, mid_epoch_only: bool = False):
    """A ``train(callback=...)`` that keeps a copy of every last.pt the run writes as
    RUN/step_N.pt (with ``mid_epoch_only``, only those written inside an epoch), for resuming
    from any step."""

    def callback(event: dict) -> None:
        if event["event"] == "checkpoint" and event["name"] == "last.pt" and (event["batch_in_epoch"] or not mid_epoch_only):
            path = Path(event["path"])
            (path.parent / f"step_{event['step']}.pt").write_bytes(path.read_bytes())

    return callback


def train_interrupted_after_first_epoch(cfg: dict) -> Path:
    """Runs ``cfg`` until its first epoch has ended (last.pt written), then stops it as a
    Ctrl-C would; returns the run directory, ready for ``--resume``."""
    from fcnseg.training.train import train

    def callback(event: dict) -> None:
        if event["event"] == "checkpoint" and event["name"] == "last.pt" and event["epoch"] == 1 and event["batch_in_epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=callback)
    return Path(cfg["out"])


def test_run_directory_files_and_checkpoint_contents(tmp_path):
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", tensorboard=True))
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.json", "metrics.jsonl", "curves.png", "samples/epoch_1.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(run / "last.pt")
    for key in ("model", "model_config", "optimizer", "scheduler", "scaler", "epoch", "step", "best_miou", "config", "classes", "palette", "mean", "std", "rng"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2 and ckpt["classes"] == ["pet", "background", "border"]
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    result = json.loads((run / "metrics.json").read_text())
    assert result["stopped"] == "epochs" and result["steps"] == 2
    assert 0 <= result["final"]["mean_iou"] <= 1 and result["best"]["mean_iou"] == pytest.approx(ckpt["best_miou"])
    model = model_from_checkpoint(run / "best.pt")  # rebuilds from model_config, loads strictly
    assert sum(p.numel() for p in model.parameters()) > 1e6
    # the saved config resolves to the same run
    saved = resolve_config({}, config_file=run / "config.yaml")
    assert saved.out == str(run) and saved.epochs == 1 and saved.crop == [64, 64]



def test_curves_are_redrawn_at_most_every_curves_every_s_and_at_the_end(tmp_path, monkeypatch):
    """Two validations in a few seconds: curves.png is drawn once (at the end) by default,
    at every validation and the end when the interval is 0; the samples at every validation."""
    import fcnseg.inference.visualize as visualize
    import fcnseg.training.train as train_mod

    drawn = []
    real = visualize.plot_curves
    monkeypatch.setattr(visualize, "plot_curves", lambda events, path: (drawn.append(len(events)), real(events, path)))
    run = train_mod.train(tiny(tmp_path / "a", epochs=2))
    assert len(drawn) == 1 and (run / "curves.png").is_file()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_1.png", "epoch_2.png"]
    drawn.clear()
    monkeypatch.setattr(train_mod, "CURVES_EVERY_S", 0.0)
    train_mod.train(tiny(tmp_path / "b", epochs=2))
    assert len(drawn) == 3 and drawn[0] < drawn[1] <= drawn[2]  # two validations, then the end with every event

def test_epoch_end_checkpoints_cost_at_most_ckpt_overhead_of_the_run(tmp_path, monkeypatch):
    """With the product's CKPT_OVERHEAD an epoch end writes last.pt only once the time since its
    last write would pay for it (save_s / CKPT_OVERHEAD): the first epoch end writes, short
    epochs after it mostly do not, the end of the run always does (the final step, exact
    resume)."""
    from conftest import PRODUCT_CKPT_OVERHEAD

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training import schedule
    from fcnseg.training.train import train

    assert PRODUCT_CKPT_OVERHEAD == 0.05
    monkeypatch.setattr(schedule, "CKPT_OVERHEAD", PRODUCT_CKPT_OVERHEAD)
    b = schedule.TimeBudget(None, [{"until": 1.0, "crop": [8, 8]}])
    b.save_s = 0.5
    assert b.checkpoint_due(10.0) and not b.checkpoint_due(9.9)  # 0.5 s a write: every 10 s
    writes = []

    def seen(event):
        if event["event"] == "checkpoint" and event["name"] == "last.pt":
            writes.append((event["step"], event["batch_in_epoch"]))

    run = train(tiny(tmp_path / "run", epochs=6, eval_every=0), callback=seen)  # 2 steps an epoch, ~0.3 s
    steps = [s for s, _ in writes]
    assert steps[0] == 2 and steps[-1] == 12  # the first epoch end and the end of the run
    assert len(writes) < 6  # not one per epoch: 6 epochs of a fraction of a second
    assert load_checkpoint(run / "last.pt")["step"] == 12


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    from fcnseg.training import train as train_mod

    straight = train_mod.train(tiny(tmp_path / "a", epochs=2, ckpt_every_steps=1), callback=keep_step_checkpoints(mid_epoch_only=True))
    ref = losses(straight)
    assert sorted(ref) == [1, 2, 3, 4] and (straight / "step_3.pt").is_file()

    # interrupted after its first epoch, then --resume
    split = train_interrupted_after_first_epoch(tiny(tmp_path / "b", epochs=2))
    assert losses(split) == {k: v for k, v in ref.items() if k <= 2}
    train_mod.train({"resume": "auto", "out": str(split)})
    assert losses(split) == ref

    # mid-epoch: from the step-3 checkpoint (epoch 2, batch 1 of 2) into a fresh directory
    mid = train_mod.train({"resume": str(straight / "step_3.pt"), "out": str(tmp_path / "c")})
    assert losses(mid) == {4: ref[4]}
    a = json.loads((straight / "metrics.json").read_text())["final"]
    c = json.loads((mid / "metrics.json").read_text())["final"]
    assert a == c


def test_ema_average_ramps_its_decay_and_copies_integer_buffers():
    from torch.optim.swa_utils import AveragedModel

    from fcnseg.training.step import ema_average

    net = nn.BatchNorm1d(1)
    avg = AveragedModel(net, multi_avg_fn=ema_average(0.5), use_buffers=True)
    expected = None
    for step, w in enumerate([1.0, 3.0, 7.0, 5.0]):
        with torch.no_grad():
            net.weight.fill_(w)
            net.num_batches_tracked.fill_(10 * step)
        avg.update_parameters(net)
        if expected is None:  # the first update copies
            expected = w
        else:  # after n = step updates the decay is min(0.5, (1 + n) / (10 + n))
            d = min(0.5, (1 + step) / (10 + step))
            expected = d * expected + (1 - d) * w
        assert avg.module.weight.item() == pytest.approx(expected)
        assert avg.module.num_batches_tracked.item() == 10 * step
    # n = 1, 2, 3: decays 2/11, 3/12, 4/13 (< 0.5), so the average follows the weights closely
    assert expected == pytest.approx((((1 * 2 / 11 + 3 * 9 / 11) * 3 / 12 + 7 * 9 / 12) * 4 / 13) + 5 * 9 / 13)


def test_ema_run_saves_the_average_and_resumes_it_exactly(tmp_path):
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.training import train as train_mod

    straight = train_mod.train(tiny(tmp_path / "a", epochs=2, ema=0.9))
    ckpt = load_checkpoint(straight / "last.pt")
    assert ckpt["ema_updates"] == ckpt["step"] == 4
    raw, avg = ckpt["train_model"], ckpt["model"]
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], avg[k])]
    assert len(moved) > 0.9 * sum(1 for k in raw if raw[k].is_floating_point())
    # validation scored the average: evaluating the checkpoint's "model" gives metrics.json's figure
    model = model_from_checkpoint(ckpt)
    ds = build_dataset("synthetic", split="val", transforms=eval_transforms(mean=ckpt["mean"], std=ckpt["std"]), size=64, length=8)
    again = evaluate(model, ds, batch_size=4)
    assert again["mean_iou"] == pytest.approx(json.loads((straight / "metrics.json").read_text())["final"]["mean_iou"], abs=1e-6)

    # interrupted after its first epoch and resumed: the same average, bit for bit
    split = train_interrupted_after_first_epoch(tiny(tmp_path / "b", epochs=2, ema=0.9))
    train_mod.train({"resume": "auto", "out": str(split)})
    resumed = load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed["ema_updates"] == 4
    for key in avg:
        assert torch.equal(resumed["model"][key], avg[key]), key
        assert torch.equal(resumed["train_model"][key], raw[key]), key


def test_max_minutes_stops_with_a_complete_run(tmp_path):
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", epochs=1000, max_minutes=0.2, eval_every=1000, log_every=2))
    result = json.loads((run / "metrics.json").read_text())
    assert result["stopped"] == "max_minutes"
    assert 1 <= result["steps"] < 1000 * 4  # (how many fit depends on the machine's load)
    assert 0 <= result["final"]["mean_iou"] <= 1
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file() and (run / "curves.png").is_file()
    ckpt = torch.load(run / "last.pt", weights_only=True)  # fcnseg writes plain data
    assert ckpt["step"] == result["steps"]
    # the lr schedule was fitted to the budget, not to the 1000 epochs asked for
    assert ckpt["scheduler"]["total_steps"] < 1000 * 4


def test_eval_every_0_trains_the_whole_budget_and_saves_the_final_model(tmp_path, monkeypatch, caplog):
    """eval_every 0: no validation at all (no probe before training, none at epoch ends or at
    the end); best.pt is the final model and the log gives the `fcnseg eval` command that
    scores it."""
    import logging

    from fcnseg.inference import evaluate as evaluate_mod
    from fcnseg.training import train as train_mod

    evaluate = evaluate_mod.evaluate

    def no_eval(*a, **kw):
        raise AssertionError("validation ran under eval_every 0")

    monkeypatch.setattr(evaluate_mod, "evaluate", no_eval)
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        run = train_mod.train(tiny(tmp_path / "run", epochs=3, max_minutes=10, eval_every=0, log_every=2))
    result = json.loads((run / "metrics.json").read_text())
    assert result["validated"] is False  # (under a budget the run reports "max_minutes" even when the epochs end it)
    assert result["best"] is None and result["final"] == {"epoch": 3.0, "step": 6}
    assert result["steps"] == 6
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "eval"]
    last = torch.load(run / "last.pt", weights_only=True)  # fcnseg writes plain data
    best = torch.load(run / "best.pt", weights_only=True)  # fcnseg writes plain data
    assert last["step"] == best["step"] == result["steps"]
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert "not validated (eval_every 0)" in caplog.text and f"fcnseg eval --checkpoint {run / 'best.pt'} --data synthetic --split val" in caplog.text
    # the checkpoint loads and scores like any other
    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data import build_dataset

    model = model_from_checkpoint(run / "best.pt")
    metrics = evaluate(model, build_dataset("synthetic", split="val", size=64, length=8), device="cpu", precision="fp32", mean=best["mean"], std=best["std"])
    assert 0 <= metrics["mean_iou"] <= 1


def test_progressive_stages_switch_crops_and_resume_exactly(tmp_path, monkeypatch):
    """Progressive resizing by steps: the first half of the planned steps on 32x32 crops of
    half-scale frames, the rest on the main 64x64 crops; the lr schedule counts steps; a run
    resumed from a checkpoint of either stage continues bit for bit."""
    from fcnseg.training import step as step_mod
    from fcnseg.training import train as train_mod

    seen: list[tuple[int, int]] = []
    orig_loss = step_mod.upsampled_segmentation_loss

    def loss(scores, masks, *a, **kw):
        seen.append(tuple(masks.shape[-2:]))
        return orig_loss(scores, masks, *a, **kw)

    monkeypatch.setattr(step_mod, "upsampled_segmentation_loss", loss)
    cfg = tiny(tmp_path / "a", epochs=4, ckpt_every_steps=1, progressive=[{"until": 0.5, "crop": [32, 32], "scale": [0.5, 0.5]}])
    straight = train_mod.train(cfg, callback=keep_step_checkpoints())
    assert seen == [(32, 32)] * 4 + [(64, 64)] * 4  # 8 planned steps: 4 on the stage's crops
    events = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["stage"]) for e in events if e["event"] == "stage"] == [(4, 1)]
    # the lr each step ran at: poly over the 8 steps
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    assert lrs == pytest.approx([lr_at(p, base_lr=2e-3, total_steps=8, warmup_steps=2) for p in range(8)])
    ref = losses(straight)
    assert sorted(ref) == list(range(1, 9))
    for k in (3, 6):  # resumed from inside the first stage and from the second
        seen.clear()
        run = train_mod.train({"resume": str(straight / f"step_{k}.pt"), "out": str(tmp_path / f"from_{k}")})
        assert losses(run) == {s: v for s, v in ref.items() if s > k}
        assert seen == [(32, 32)] * max(0, 4 - k) + [(64, 64)] * min(4, 8 - k)


def test_progressive_switch_logs_the_steps_of_the_ended_stage(tmp_path):
    """A stage that ends inside a logging window logs that window's steps first (their mean
    loss, on the ended stage's timing); the windows then restart on the new crops."""
    from fcnseg.training.train import train

    stage = [{"until": 0.25, "crop": [32, 32], "scale": [0.5, 0.5]}]
    common = dict(data_options={"size": 64, "length": 32}, epochs=2, progressive=stage)

    def lrs(run: Path) -> dict[int, float]:
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {e["step"]: e["lr"] for e in events if e["event"] == "train"}

    each = train(tiny(tmp_path / "every", **common))  # 16 steps, each logged
    every = losses(each)
    assert sorted(every) == list(range(1, 17))
    by3 = train(tiny(tmp_path / "by3", log_every=3, **common))
    windows = losses(by3)
    # every 3rd step, the switch after step 4, the epoch end at step 8 and the last step
    assert sorted(windows) == [3, 4, 6, 8, 9, 12, 15, 16]
    start = 0
    for end in sorted(windows):
        assert windows[end] == pytest.approx(sum(every[s] for s in range(start + 1, end + 1)) / (end - start), rel=1e-5), end
        start = end
    every_lr = lrs(each)
    assert lrs(by3) == {s: every_lr[s] for s in windows}  # each line: the rate of its last step


def test_time_budget_plans_the_steps_of_each_stage():
    """The plan alone: 10 s spent of 100, steps of 0.01 s on the first stage's 10x10 crops;
    4000 of them fit before the stage ends at 50 s, then (99 - 50) s of 0.04 s steps (4x the
    pixels), 1 s being kept for the end; in the last stage only its own step time counts."""
    from fcnseg.training.schedule import TimeBudget, stage_at

    stages = [{"until": 0.5, "crop": [10, 10], "scale": [1, 1]}, {"until": 1.0, "crop": [20, 20], "scale": [1, 1]}]
    assert [stage_at(stages, f) for f in (0.0, 0.49, 0.5, 0.99, 1.5)] == [0, 0, 1, 1, 1]
    b = TimeBudget(100.0, stages)
    b.eval_s = 0.0
    assert b.steps_left(10.0, 0, steps_per_epoch=10, eval_every=1) is None  # nothing timed yet
    b.add_steps(5, 0.05, stage=0)
    assert b.step_time(0) == pytest.approx(0.01) and b.step_time(1) == pytest.approx(0.04)
    assert b.steps_left(10.0, 0, steps_per_epoch=10, eval_every=1) == 4000 + 1225
    assert b.steps_left(60.0, 1, steps_per_epoch=10, eval_every=1) == int(39 / 0.04)
    # end-of-epoch work (2 s an epoch of 10 steps) is spread over the steps: 0.2 s more each
    b.epoch_end_s.append(2.0)
    assert b.steps_left(60.0, 1, steps_per_epoch=10, eval_every=1) == int(39 / 0.24)
    # the next step would overrun the budget once elapsed + reserve + a step reach it
    assert not b.out_of_time(98.9, 1) and b.out_of_time(98.97, 1)
    # the reserve: the final validation (1.1x), the checkpoints (one, or two without
    # validation: last.pt and best.pt) and the pictures
    b.eval_s, b.save_s, b.draw_s = 10.0, 3.0, 1.0
    assert b.reserve_s() == pytest.approx(11 + 3 + 1 + 1)
    b2 = TimeBudget(100.0, stages, saves=2)
    b2.save_s, b2.draw_s = 3.0, 1.0
    assert b2.reserve_s() == pytest.approx(6 + 1 + 1)
    unbounded = TimeBudget(None, stages)
    unbounded.add_steps(5, 0.05, stage=0)
    assert unbounded.steps_left(10.0, 0, steps_per_epoch=10, eval_every=1) is None and not unbounded.out_of_time(1e9, 0)


def test_progressive_budget_splits_the_time_and_fits_the_schedule(tmp_path):
    """Under max_minutes the stage switch and the stop happen in a complete run whose lr
    schedule ended with the budget, the ended stage's steps logged at the switch."""
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", epochs=1000, max_minutes=0.25, eval_every=1000, log_every=2, progressive=[{"until": 0.5, "crop": [32, 32], "scale": [0.5, 0.5]}]))
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    switch = [e for e in events if e["event"] == "stage"]
    assert len(switch) <= 1  # (a loaded machine may run out of budget before the switch)
    logged = [e["step"] for e in events if e["event"] == "train"]
    assert all(s["step"] in logged for s in switch)  # the ended stage's last steps are logged at the switch
    result = json.loads((run / "metrics.json").read_text())
    assert result["stopped"] == "max_minutes"
    assert logged[-1] == result["steps"]  # ... and the steps before the stop
    ckpt = torch.load(run / "last.pt", weights_only=True)  # fcnseg writes plain data
    assert ckpt["scheduler"]["total_steps"] < 1000 * 4  # the schedule was fitted to the budget, not to the 1000 epochs


def _write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.train import train

    out = tmp_path / "run"
    # plain SGD: no optimizer state, so a checkpoint per step stays cheap
    cfg = tiny(out, epochs=2, ckpt_every_steps=1, optimizer="sgd", momentum=0.0, data_options={"size": 64, "length": 16})
    del cfg["out"]
    yml = _write_yaml(tmp_path / "tiny.yaml", cfg)
    with open(tmp_path / "log.txt", "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "train", "--config", str(yml), "--out", str(out)], stdout=logf, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            step = 0
            while step < 3 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
                if (out / "last.pt").is_file():
                    step = load_checkpoint(out / "last.pt")["step"]
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-2000:]
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(out / "last.pt")  # intact: written atomically
    assert 3 <= ckpt["step"] < 8
    train({"resume": "auto", "out": str(out)})
    result = json.loads((out / "metrics.json").read_text())
    assert result["steps"] == 8 and result["epochs"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert steps == list(range(1, 9))  # events past the checkpoint were dropped, none repeated


def test_zero_argument_fcnseg_train(tmp_path, monkeypatch):
    """`fcnseg train` with no arguments, its defaults shortened for the test."""
    from fcnseg import config as config_mod
    from fcnseg.cli import main

    short = {**config_mod.TrainConfig().to_dict(), **tiny(tmp_path, epochs=1)}
    short["out"] = None  # the default: runs/<timestamp>
    monkeypatch.setattr(config_mod, "default_config", lambda: dict(short))
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    result = json.loads((runs[0] / "metrics.json").read_text())
    # the zero-argument run is time-bounded (its config keeps the budget); here its one epoch
    # ends before the budget does, and the run says so
    assert result["steps"] == 2 and result["stopped"] == "epochs"
    assert resolve_config({}, config_file=runs[0] / "config.yaml").max_minutes == config_mod.DEFAULT_MINUTES


def test_default_config_is_the_documented_quick_run():
    from fcnseg.config import DEFAULT_MINUTES

    cfg = TrainConfig()
    assert (cfg.data, cfg.model, cfg.backbone, cfg.upsample) == ("synthetic", "fcn8s", "resnet18", "bilinear")
    assert cfg.max_minutes == DEFAULT_MINUTES == 3.0 and cfg.weights is None and cfg.precision == "auto"
    # the budget is the zero-argument run's: epochs given alone run to their end, as before
    assert resolve_config({}).max_minutes == 3.0 and resolve_config({"epochs": 5}).max_minutes is None
    assert resolve_config({"epochs": 5, "max_minutes": 2}).max_minutes == 2 and resolve_config({"max_minutes": 0}).max_minutes is None


def _five_class_checkpoint(path: Path) -> Path:
    torch.save({"model": {}, "model_config": {"name": "fcn8s", "backbone": "resnet18", "num_classes": 5}}, path)
    return path


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--model", "fcn9s"], "unknown model 'fcn9s'"),
        (["--data", "camvid", "--data-root", "{tmp}/nowhere"], "does not exist"),
        (["--config", "{tmp}/bad.yaml"], "unknown config key 'epoch'"),
        (["--weights", "{tmp}/five.pt"], "predicts 5 classes"),
        (["--crop", "64", "64", "64"], "crop must be one or two"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    from fcnseg.cli import main

    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    _five_class_checkpoint(tmp_path / "five.pt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fcnseg train: error: ") and fragment in err[0], err


def test_bad_argument_in_a_real_process_prints_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fcnseg", "train", "--backbone", "resnet7", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet7" in lines[0], proc.stderr


def test_aux_loss_lovasz_class_weights_accumulation_and_clipping_run(tmp_path, caplog, monkeypatch):
    import logging

    import fcnseg.training.step as step_mod
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.training.train import train

    calls = []
    real = step_mod.lovasz_softmax_loss
    monkeypatch.setattr(step_mod, "lovasz_softmax_loss", lambda logits, target: calls.append(logits.shape) or real(logits, target))
    caplog.set_level(logging.INFO, logger="fcnseg")
    cfg = tiny(tmp_path / "run", aux_loss=0.4, lovasz=0.5, class_weights="median", accum_steps=2, batch_size=2, clip_grad=1.0, optimizer="sgd", lr=0.01)
    run = train(cfg)
    assert "median-frequency class weights: pet=" in caplog.text
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 2  # 8 images / (batch 2 x 2 accumulated) = 2 optimizer steps
    assert len(calls) == 4 and calls[0][:2] == (2, 3)  # the Lovász term on each micro-batch's full-size logits
    assert ckpt["aux_head"]["weight"].shape == (3, 256, 1, 1)  # on ResNet-18's stride-16 layer3
    assert not any("aux" in k for k in model_from_checkpoint(ckpt).state_dict())  # the aux head is not part of the model
    assert all(math.isfinite(v) for v in losses(run).values())


def test_copy_paste_runs_on_the_named_classes_or_the_rare_ones(tmp_path, caplog, monkeypatch):
    """copy_paste > 0: every training batch goes through copy_paste with the classes the config
    names (or, by default, those whose median-frequency weight is above 1); an unknown class
    name stops the run before training with the dataset's class list."""
    import logging

    import fcnseg.data.transforms as tf_mod
    from fcnseg.data import build_dataset
    from fcnseg.data.stats import median_frequency_weights
    from fcnseg.training.train import train

    calls = []
    real = tf_mod.copy_paste
    monkeypatch.setattr(tf_mod, "copy_paste", lambda im, m, classes, p: calls.append((im.shape, list(classes), p)) or real(im, m, classes, p))
    caplog.set_level(logging.INFO, logger="fcnseg")
    train(tiny(tmp_path / "named", copy_paste=0.5, paste_classes=["border", "0"]))
    assert "copy-paste (p=0.5) of pet, border" in caplog.text
    assert calls == [((4, 3, 64, 64), [0, 2], 0.5)] * 2  # both steps of the epoch
    calls.clear()
    cfg = tiny(tmp_path / "default", copy_paste=1.0)
    train(cfg)
    weights = median_frequency_weights(build_dataset("synthetic", split="train", **cfg["data_options"]))
    rare = [c for c, w in enumerate(weights) if w > 1.0]
    assert rare and len(rare) < len(weights) and calls and calls[0][1] == rare
    with pytest.raises(ConfigError, match=r"paste_classes: synthetic has no class 'cat'; its classes are pet, background, border"):
        train(tiny(tmp_path / "bad", copy_paste=0.5, paste_classes=["cat"]))
    with pytest.raises(ConfigError, match=r"class index 7 is outside 0..2"):
        train(tiny(tmp_path / "bad2", copy_paste=0.5, paste_classes=[7]))


def test_square_root_median_class_weights(tmp_path, caplog, monkeypatch):
    """class_weights=median_sqrt weighs the loss by the square root of the median-frequency
    weights (logged per class)."""
    import logging
    import re

    from fcnseg.data import build_dataset
    from fcnseg.data.stats import median_frequency_weights
    from fcnseg.training.train import train

    caplog.set_level(logging.INFO, logger="fcnseg")
    cfg = tiny(tmp_path / "run", class_weights="median_sqrt")
    train(cfg)
    line = next(r.getMessage() for r in caplog.records if "class weights" in r.getMessage())
    assert line.startswith("square-root median-frequency class weights")
    logged = [float(v) for v in re.findall(r"=([0-9.]+)", line)]
    ds = build_dataset("synthetic", split="train", **cfg["data_options"])
    full = median_frequency_weights(ds)
    assert logged == pytest.approx([math.sqrt(w) for w in full], abs=0.006)
    assert max(full) > 1.2 and max(logged) < max(full)  # softer than the full weights
    # a training split over CLASS_STATS_IMAGES: the weights of that many masks, spread evenly
    import fcnseg.training.data as data_mod

    monkeypatch.setattr(data_mod, "CLASS_STATS_IMAGES", 4)
    caplog.clear()
    train({**cfg, "out": str(tmp_path / "sampled")})
    assert "class frequencies counted on 4 of the 8 training masks, spread evenly" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "class weights" in r.getMessage())
    sampled = median_frequency_weights(ds, max_images=4)
    assert max(abs(a - b) for a, b in zip(sampled, full, strict=True)) > 0.05  # four masks count differently ...
    assert [float(v) for v in re.findall(r"=([0-9.]+)", line)] == pytest.approx([math.sqrt(w) for w in sampled], abs=0.006)  # ... and are what the run used


def test_staged_init_from_with_frozen_backbone(tmp_path, caplog):
    """FCN-16s from an FCN-32s run: the matching tensors are copied, score_pool4 starts at
    zero, and a frozen backbone (BN statistics included) stays exactly as loaded."""
    import logging

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.train import train

    first = train(tiny(tmp_path / "fcn32s", model="fcn32s"))
    caplog.set_level(logging.INFO, logger="fcnseg")
    second = train(tiny(tmp_path / "fcn16s", model="fcn16s", init_from=str(first / "best.pt"), freeze_backbone=True))
    assert "left at their initialisation: score_pool4.weight, score_pool4.bias" in caplog.text
    a = load_checkpoint(first / "best.pt")["model"]
    b = load_checkpoint(second / "last.pt")["model"]
    backbone = [k for k in a if k.startswith("backbone.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)  # weights and BN buffers
    assert not torch.equal(a["score_fr.weight"], b["score_fr.weight"])  # the head trained
    assert b["score_pool4.weight"].abs().sum() > 0


def test_data_check_refuses_bad_files_unless_skip_check(tmp_path, caplog):
    import logging

    from datagen import make_camvid, truncate

    from fcnseg.errors import DataError
    from fcnseg.training.train import train

    root = make_camvid(tmp_path / "camvid", counts={"train": 5, "val": 2}, size=(40, 48))
    bad = sorted((root / "train").glob("*.png"))[1]
    truncate(bad, keep=0.3)
    cfg = tiny(tmp_path / "run", data="camvid", data_root=str(root), data_options={}, crop=[32, 32], batch_size=2)
    with pytest.raises(DataError, match="--skip-check"):
        train(cfg)
    caplog.set_level(logging.INFO, logger="fcnseg")
    run = train({**cfg, "skip_check": True})
    assert bad.name in caplog.text and "left out 1 image/mask pair" in caplog.text
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2  # 4 good images / batch 2


def test_preload_and_persistent_workers_train_the_same_model(tmp_path, caplog):
    """preload (pairs decoded once, held in memory) with two persistent loader workers gives
    bit-identical weights to decoding every sample in the main process: the augmentation of
    each sample is a function of (seed, epoch, index), not of who decodes it."""
    import logging

    from datagen import make_camvid

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.train import train

    root = make_camvid(tmp_path / "camvid", counts={"train": 4, "val": 2}, size=(40, 48))
    cfg = tiny(tmp_path / "plain", data="camvid", data_root=str(root), data_options={}, crop=[32, 32], batch_size=2, epochs=2, scale=[0.75, 1.25])
    a = load_checkpoint(train(cfg) / "last.pt")["model"]
    caplog.set_level(logging.INFO, logger="fcnseg")
    b = load_checkpoint(train({**cfg, "out": str(tmp_path / "pre"), "preload": True, "workers": 2}) / "last.pt")["model"]
    assert "preloaded 4 training pairs" in caplog.text
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["val_images_in_train"] == 0
    # training on train+val says the validation scores are not held-out
    run = train({**cfg, "out": str(tmp_path / "tv"), "train_split": "trainval", "epochs": 1})
    assert "2 of the 2 validation images (val) are also training images (trainval)" in caplog.text
    assert json.loads((run / "metrics.json").read_text())["val_images_in_train"] == 2


def test_zero_init_residual_trains_from_identity_blocks_and_refuses_pretrained_weights(tmp_path):
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.train import train

    scales = {}
    for zero in (False, True):
        run = train(tiny(tmp_path / f"run{zero}", zero_init_residual=zero, lr=1e-3))
        state = load_checkpoint(run / "last.pt")["model"]
        scales[zero] = torch.stack([v.abs().max() for k, v in state.items() if k.endswith("bn2.weight")])
    assert len(scales[True]) == 8
    assert scales[True].max() < 0.01  # 2 AdamW steps of lr <= 1e-3 from 0
    assert scales[False].min() > 0.9  # the default keeps BatchNorm's scale at ~1
    with pytest.raises(ConfigError, match="zero_init_residual is an initialisation for training from scratch"):
        train(tiny(tmp_path / "w", zero_init_residual=True, weights="imagenet"))
    with pytest.raises(ConfigError, match="zero_init_residual needs a ResNet backbone, not 'vgg16'"):
        train(tiny(tmp_path / "v", zero_init_residual=True, backbone="vgg16"))


def test_diverging_run_stops_with_the_last_good_checkpoint_kept(tmp_path, capsys):
    """`fcnseg train --lr 1e6 --optimizer sgd`: the loss turns non-finite; the run stops with
    one line naming the step, the lr and the last good checkpoint (exit 2), writes no
    checkpoint after it, and metrics.json says why."""
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.cli import main

    cfg = tiny(tmp_path / "run", epochs=3, ckpt_every_steps=1)
    del cfg["out"]
    yml = _write_yaml(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "run"
    assert main(["train", "--config", str(yml), "--lr", "1e6", "--optimizer", "sgd", "--out", str(out)]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if "error" in line]  # (the progress bar writes to stderr too)
    assert len(err) == 1 and err[0].startswith("fcnseg train: error: the training loss became") and "Traceback" not in text, err
    result = json.loads((out / "metrics.json").read_text())
    assert result["stopped"] == "non-finite loss" and result["loss"] in ("nan", "inf", "-inf")
    bad_step = result["step"]
    assert f"at step {bad_step}, lr " in err[0] and f"{out / 'last.pt'} (step {bad_step - 1})" in err[0] and "--resume" in err[0]
    ckpt = load_checkpoint(out / "last.pt")  # the one written before, intact
    assert ckpt["step"] == bad_step - 1 == result["last_good_step"]
    assert not (out / "best.pt").exists() or load_checkpoint(out / "best.pt")["step"] < bad_step
    model_from_checkpoint(ckpt)  # loads strictly
    assert all(math.isfinite(v) for s, v in losses(out).items() if s < bad_step)


def test_a_training_file_gone_mid_run_stops_resumably(tmp_path):
    """A training image deleted after the first epoch: the run stops with the DataError
    naming the file and the --resume command, last.pt at the last completed step; with the
    file back, --resume finishes the run."""
    from datagen import make_camvid

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.errors import DataError
    from fcnseg.training.train import train

    root = make_camvid(tmp_path / "camvid", counts={"train": 4, "val": 2}, size=(40, 48))
    victim = sorted((root / "train").glob("*.png"))[0]
    saved = victim.read_bytes()
    cfg = tiny(tmp_path / "run", data="camvid", data_root=str(root), data_options={}, crop=[32, 32], batch_size=2, epochs=2)

    def delete_after_epoch_1(event: dict) -> None:
        if event["event"] == "checkpoint" and event["epoch"] == 1 and event["batch_in_epoch"] == 0 and victim.exists():
            victim.unlink()

    with pytest.raises(DataError) as e:
        train(cfg, callback=delete_after_epoch_1)
    message = str(e.value)
    assert victim.name in message and "not found" in message and f"fcnseg train --resume {tmp_path / 'run' / 'last.pt'}" in message
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] in (2, 3)  # stopped in epoch 2, at the last completed step
    assert f"training stopped at step {ckpt['step']}" in message
    victim.write_bytes(saved)
    run = train({"resume": "auto", "out": str(tmp_path / "run")})
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert sorted(losses(run)) == [1, 2, 3, 4]
