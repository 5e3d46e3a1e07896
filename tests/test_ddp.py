"""Data-parallel training: two gloo processes on 127.0.0.1 launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml


def test_two_process_gloo_run_validates_like_one_process_and_resumes(tmp_path):
    """A 2-process gloo run of one epoch (2 steps) validates like one process scoring all the
    images with the same weights; resumed under DDP for a second epoch, both ranks continue
    from the checkpoint's step (no step repeated or skipped) and the weights move on."""
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference.evaluate import evaluate

    cfg = dict(
        data="synthetic", data_options={"size": 64, "length": 18}, model="fcn8s", backbone="resnet18",
        upsample="bilinear", crop=[64, 64], batch_size=4, epochs=1, warmup_steps=1, log_every=1,
        num_samples=1, tensorboard=False, device="cpu",  # gloo, also where a GPU is present
    )
    yml = tmp_path / "ddp.yaml"
    yml.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fcnseg", "train"]
    proc = subprocess.run([*train, "--config", str(yml), "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads((out / "metrics.json").read_text())
    assert result["world_size"] == 2
    # 18 images over 2 ranks x batch 4: 2 steps an epoch; only rank 0 wrote the log
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2]
    assert sum(e["event"] == "eval" for e in events) == 1

    # the all-reduced validation of the 2-process run (9 val images each) equals one
    # process scoring all 18 with the same weights
    ckpt = load_checkpoint(out / "last.pt")
    model = model_from_checkpoint(ckpt)
    if result["precision"] != "fp32":
        model = model.to(memory_format=torch.channels_last)  # as the trainer runs it
    val = build_dataset("synthetic", split="val", size=64, length=18)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes ran
    try:
        single = evaluate(model, val, device="cpu", precision=result["precision"], mean=ckpt["mean"], std=ckpt["std"])
    finally:
        torch.set_num_threads(threads)
    assert single["num_images"] == 18
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert single[key] == pytest.approx(result["final"][key], abs=0), key
    assert single["iou"] == pytest.approx(ckpt["last_eval"]["iou"], abs=0, nan_ok=True)

    proc = subprocess.run([*train, "--resume", str(out / "last.pt"), "--epochs", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    after = load_checkpoint(out / "last.pt")
    assert after["step"] == 4 and after["epoch"] == 2
    assert not torch.equal(after["model"]["backbone.layer4.0.conv1.weight"], ckpt["model"]["backbone.layer4.0.conv1.weight"])


def test_more_processes_than_gpus_is_a_config_error_naming_the_fix(monkeypatch):
    from fcnseg.errors import ConfigError
    from fcnseg.training import distributed as ddp

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as e:
        ddp.setup_distributed(torch.device("cuda"))
    msg = str(e.value)
    assert "process 1 of 2" in msg and "1 GPU(s) are visible" in msg
    assert "--nproc_per_node=1" in msg and "--device cpu" in msg
