"""fcnseg.bench and `fcnseg bench`: the keys and numbers it reports, FLOP counting against a
hand count, the CLI's JSON output and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fcnseg.bench import benchmark, count_flops, matmul_peak_tflops
from fcnseg.cli import main
from fcnseg.models import MODELS


class Tiny(nn.Module):
    """conv 3x3 -> ReLU -> conv 1x1: logits (N, K, H, W) at the input size."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3):
        super().__init__()
        self.backbone = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def _tiny_builder(*, num_classes: int, in_channels: int = 3, **_model_options):
    # a registry entry for the CLI tests; the options the registry passes (backbone,
    # upsample, align, ...) do not apply to this net
    return Tiny(num_classes, in_channels)


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny-bench", _tiny_builder)
    return "tiny-bench"


KEYS = (
    "train_img_s",
    "infer_img_s",
    "peak_mem_mb",
    "infer_peak_mem_mb",
    "flops_per_img",
    "train_flops_per_img",
    "train_tflops",
    "infer_tflops",
    "peak_tflops",
    "train_ms_per_step",
    "infer_ms_per_batch",
    "train_frac_of_peak",
    "train_img_s_best",
    "infer_img_s_best",
    "train_img_s_cpu",
    "train_cpu_share",
    "peak_tflops_cpu",
    "train_frac_of_peak_cpu",
)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_benchmark_reports_positive_finite_numbers(precision):
    r = benchmark(
        Tiny(),
        size=(24, 20),
        batch=2,
        steps=2,
        warmup=1,
        num_classes=3,
        precision=precision,
        peak_n=128,
    )
    for key in KEYS:
        assert isinstance(r[key], (int, float)), key
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["size"] == [24, 20] and r["batch"] == 2 and r["device"] == "cpu"
    assert r["precision"] in ("fp32", "bf16")
    # images/s and ms/step are two views of the same timing
    assert r["train_img_s"] == pytest.approx(2 * 1000 / r["train_ms_per_step"], rel=1e-6)
    assert r["infer_img_s"] == pytest.approx(2 * 1000 / r["infer_ms_per_batch"], rel=1e-6)
    # forward of the tiny net: 2*3*8*9 + 2*8*3 FLOPs per pixel (biases not counted)
    assert r["flops_per_img"] == (2 * 3 * 8 * 9 + 2 * 8 * 3) * 24 * 20
    # backward adds weight grads for both convs and the input grad of the second
    assert r["train_flops_per_img"] > 2 * r["flops_per_img"]
    assert r["train_tflops"] == pytest.approx(
        r["train_flops_per_img"] * r["train_img_s"] / 1e12, rel=1e-9
    )


def test_benchmark_trains_the_model():
    net = Tiny()
    before = net.head.weight.detach().clone()
    benchmark(
        net,
        size=16,
        batch=2,
        steps=1,
        warmup=1,
        num_classes=3,
        flops=False,
        peak=False,
        phases=("train",),
        precision="fp32",
    )
    assert not torch.equal(before, net.head.weight.detach())


def test_freeze_backbone_trains_head_only():
    net = Tiny()
    before = net.backbone.weight.detach().clone()
    r = benchmark(
        net,
        size=16,
        batch=2,
        steps=1,
        warmup=1,
        num_classes=3,
        flops=False,
        peak=False,
        phases=("train",),
        freeze_backbone=True,
        precision="fp32",
    )
    assert torch.equal(before, net.backbone.weight)
    assert r["trainable_params"] == 8 * 3 + 3


@pytest.mark.parametrize("cin,cout,k,h,w", [(3, 8, 3, 10, 12), (16, 4, 1, 7, 9), (5, 6, 5, 11, 11)])
def test_conv_flops_equal_hand_count(cin, cout, k, h, w):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    assert count_flops(conv, (1, cin, h, w)) == 2 * cin * cout * k * k * h * w
    # per image: a batch of 3 counts three times as much
    assert count_flops(conv, (3, cin, h, w)) == 3 * 2 * cin * cout * k * k * h * w


def test_conv_training_flops_are_forward_plus_weight_grad():
    # the input needs no gradient, so backward is the weight gradient only: one more
    # convolution's worth of FLOPs
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    fwd = 2 * 4 * 6 * 9 * 8 * 8
    assert count_flops(conv, (1, 4, 8, 8), train=True, num_classes=6) == 2 * fwd


def test_matmul_peak_is_positive():
    assert matmul_peak_tflops(torch.float32, n=128, reps=2) > 0


def test_cli_json_is_one_object(tiny_registered, capsys):
    rc = main(
        [
            "bench",
            "--model",
            tiny_registered,
            "--size",
            "16",
            "20",
            "--batch",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--num-classes",
            "4",
            "--peak-n",
            "128",
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out
    r = json.loads(out)
    assert r["size"] == [16, 20] and r["num_classes"] == 4 and r["model"] == tiny_registered
    for key in KEYS:
        assert r[key] > 0


def test_cli_table_output(tiny_registered, capsys):
    rc = main(
        [
            "bench",
            "--model",
            tiny_registered,
            "--size",
            "16",
            "--batch",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--only",
            "infer",
            "--no-peak",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "infer_img_s" in out and "train_img_s" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch", "0"],
        ["--steps", "0"],
        ["--size", "0"],
        ["--size", "1", "2", "3"],
        ["--precision", "fp8"],
        ["--precision", "fp16", "--device", "cpu"],
        ["--model", "no-such-model"],
        ["--batch", "two"],
        ["--threads", "0"],
        ["--data", "no-such-dataset"],
        ["--data", "synthetic", "--only", "infer"],
    ],
)
def test_cli_bad_arguments_exit_2(tiny_registered, argv, capsys):
    base = ["bench", "--model", tiny_registered, "--json", "--steps", "1", "--warmup", "0"]
    try:
        rc = main(base + argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err


def test_data_mode_times_loader_and_step():
    r = benchmark(
        Tiny(),
        size=32,
        batch=2,
        steps=2,
        warmup=1,
        num_classes=3,
        flops=False,
        peak=False,
        phases=("train",),
        data="synthetic",
        data_options={"size": 48, "length": 8},
        workers=0,
        precision="fp32",
    )
    assert r["data"] == "synthetic" and r["dataset_len"] == 8
    for key in ("loader_img_s", "together_img_s", "train_img_s"):
        assert math.isfinite(r[key]) and r[key] > 0
    assert r["input_bound"] == (r["loader_img_s"] < r["train_img_s"])
