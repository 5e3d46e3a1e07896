"""Parts the CamVid recipe relies on: validation during training scores with the run's
``eval_tta`` (so best.pt is picked as ``fcnseg eval`` scores it), and the shipped CamVid
configs resolve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_validation_uses_eval_tta_and_eval_crf(tmp_path, monkeypatch):
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference import evaluate as evaluate_module
    from fcnseg.inference.evaluate import evaluate
    from fcnseg.models import build_model
    from fcnseg.training.train import train

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("tta"), kwargs.get("crf")))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)

    cfg = dict(
        data="synthetic", data_options={"size": 96, "length": 8}, model="fcn8s", backbone="resnet18",
        upsample="bilinear", crop=[64, 64], batch_size=4, epochs=1, warmup_steps=1, log_every=1,
        eval_batch_size=4, num_samples=0, tensorboard=False, out=str(tmp_path / "run"), eval_tta="scales=0.5",
        eval_crf="iterations=2,radius=2",
    )
    run = train(cfg)
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["config"]["eval_tta"] == "scales=0.5" and ckpt["config"]["eval_crf"] == "iterations=2,radius=2"
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    val = build_dataset("synthetic", split="val", size=96, length=8)
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in logged if e["event"] == "eval"][-1]
    assert seen == [("scales=0.5", "iterations=2,radius=2")]  # one validation (the epoch end), with the run's TTA and CRF
    half = evaluate(model, val, tta="scales=0.5", mean=ckpt["mean"], std=ckpt["std"], crf="iterations=2,radius=2")
    assert logged["mean_iou"] == pytest.approx(half["mean_iou"], abs=1e-9)
    assert logged["pixel_acc"] == pytest.approx(half["pixel_acc"], abs=1e-9)


@pytest.mark.parametrize("name", ["camvid.yaml", "camvid_imagenet.yaml", "oxford_pet_imagenet.yaml"])
def test_camvid_and_imagenet_configs_resolve(name):
    from fcnseg.config import resolve_config

    cfg = resolve_config(config_file=REPO / "configs" / name)
    if name == "camvid.yaml":
        assert cfg.weights is None and cfg.max_minutes == 30
        # scored with seven scales, plain and mirrored, then the CRF (fcnseg eval's defaults for its runs)
        assert (cfg.eval_tta, cfg.eval_crf) == ("flip,scales=0.375,0.5,0.75,1,1.25,1.5,1.75", "default")
        # chosen on val training on train alone; shipped on train + val for the test score
        assert (cfg.train_split, cfg.val_split, cfg.model) == ("trainval", "val", "fcn4s")
        assert cfg.preload and cfg.hard_pixels == 0.25 and cfg.eval_every == 0  # no validation: the whole budget trains; `fcnseg eval` scores best.pt
        # progressive resizing: the first half of the budget on half-resolution crops
        assert cfg.progressive == [{"until": 0.5, "crop": [144, 192], "scale": [0.375, 0.625]}]
    else:
        assert cfg.weights == "imagenet"
