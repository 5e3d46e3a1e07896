"""The GPU paths: training under bf16 and fp16 + GradScaler autocast, checkpoints that move
between devices, evaluation and the benchmark on CUDA. Skipped where no CUDA GPU is present
(CI never has one); run on a GPU machine with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import losses, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_on_cuda_writes_a_checkpoint_that_scores_the_same_on_cpu(tmp_path):
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", device="cuda", epochs=4, lr=3e-3))
    result = json.loads((run / "metrics.json").read_text())
    assert result["device"].startswith("cuda")
    assert result["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    steps = losses(run)
    assert len(steps) == 8 and all(torch.isfinite(torch.tensor(v)) for v in steps.values())
    assert steps[8] < steps[1]  # it learns

    # the checkpoint loads on the CPU; fp32 scores on both devices agree to within a few pixels
    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    val = build_dataset("synthetic", split="val", transforms=eval_transforms(mean=ckpt["mean"], std=ckpt["std"]), size=64, length=8)
    on_cpu = evaluate(model, val, device="cpu", precision="fp32")
    model.to("cuda")
    on_gpu = evaluate(model, val, device="cuda", precision="fp32")
    cpu_cm, gpu_cm = torch.tensor(on_cpu["confusion"]), torch.tensor(on_gpu["confusion"])
    pixels = int(cpu_cm.sum())
    assert int(gpu_cm.sum()) == pixels == 8 * 64 * 64
    assert int((gpu_cm - cpu_cm).abs().sum()) <= 2e-3 * pixels
    assert on_gpu["mean_iou"] == pytest.approx(on_cpu["mean_iou"], abs=2e-3)
    # and the autocast path of the GPU stays close to fp32
    amp = evaluate(model, val, device="cuda", precision="auto")
    assert amp["mean_iou"] == pytest.approx(on_cpu["mean_iou"], abs=2e-2)


def test_fp16_run_keeps_its_grad_scaler_and_resumes(tmp_path):
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.train import train

    run = train(tiny(tmp_path / "run", device="cuda", precision="fp16", epochs=1))
    ckpt = load_checkpoint(run / "last.pt")
    assert json.loads((run / "metrics.json").read_text())["precision"] == "fp16"
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0  # the GradScaler's state is saved
    # a second epoch from that checkpoint continues the step count and the scaler
    train({"resume": "auto", "out": str(run), "epochs": 2})
    again = load_checkpoint(run / "last.pt")
    assert again["step"] == 4 and again["scaler"]["scale"] > 0
    assert sorted(losses(run)) == [1, 2, 3, 4]


def test_benchmark_on_cuda_reports_device_memory():
    from fcnseg.bench import benchmark

    r = benchmark("fcn8s", backbone="resnet18", size=64, batch=2, steps=2, warmup=1, num_classes=3,
                  device="cuda", peak_n=1024)
    assert r["device"].startswith("cuda") and r["precision"] in ("bf16", "fp16")
    for key in ("train_img_s", "infer_img_s", "peak_mem_mb", "train_tflops"):
        assert r[key] > 0, key
    assert r["train_img_s"] == pytest.approx(2 * 1000 / r["train_ms_per_step"], rel=1e-6)


def test_fp32_peak_follows_the_convolutions_tf32_policy(monkeypatch):
    from fcnseg.bench import _matmul_peak

    dev = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default for convolutions
    tf32, _ = _matmul_peak(torch.float32, dev, 4096, 3)
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after the measurement
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    plain, _ = _matmul_peak(torch.float32, dev, 4096, 3)
    bf16, _ = _matmul_peak(torch.bfloat16, dev, 4096, 3)
    # TF32 tensor cores run well above plain fp32 FMA, below bf16
    assert 2 * plain < tf32 < 1.2 * bf16, (plain, tf32, bf16)
