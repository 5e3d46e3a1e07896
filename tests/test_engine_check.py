"""The engine choice of `--backend auto` (fcnseg.inference.loader) and its task check
(fcnseg.inference.verify): inexact engines (bf16, int8) qualify only on labelled data, within
0.3 mean-IU points and 1.0 per class of eager fp32; the evidence is cached and reported; int8
export keeps the most sensitive layers in fp32 until it passes, else refuses with the figures."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fcnseg.cli import main  # noqa: E402
from fcnseg.errors import ConfigError, FcnsegError  # noqa: E402
from fcnseg.export import cache as XC  # noqa: E402
from fcnseg.inference import backends as B  # noqa: E402
from fcnseg.inference import loader as L  # noqa: E402
from fcnseg.inference import verify as V  # noqa: E402
from fcnseg.models import build_model  # noqa: E402

CLASSES = ["pet", "background", "border"]


@pytest.fixture(scope="module")
def ckpt():
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[0].startswith("score") and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return {
        "model": model.state_dict(), "model_config": model.config, "classes": CLASSES,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "config": {"data": "synthetic", "data_options": {"size": [64, 80], "length": 6}},
    }


@pytest.fixture(scope="module")
def _onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(_onnx_cache, monkeypatch):
    """The module's cache folder: its ONNX files are kept (exports take seconds), the engine
    choices are not."""
    monkeypatch.setenv("FCNSEG_CACHE", str(_onnx_cache))
    for name in ("engines.json", "auto.json"):
        (_onnx_cache / name).unlink(missing_ok=True)
    return _onnx_cache


def test_judge_refuses_half_a_point_and_a_class_beyond_one_point():
    ref = {"mean_iou": 60.0, "iou": [70.0, 50.0, None]}
    tol = V.Tolerance()
    names = ["a", "b", "c"]
    bad = V.judge(ref, {"mean_iou": 59.5, "iou": [69.5, 49.5, None]}, names, tol)
    assert not bad["qualified"] and bad["miou_delta"] == -0.5 and "mean IU -0.50" in bad["reason"]
    ok = V.judge(ref, {"mean_iou": 59.8, "iou": [69.8, 49.8, 12.0]}, names, tol)
    assert ok["qualified"] and ok["miou_delta"] == pytest.approx(-0.2) and "c" not in ok["class_deltas"]
    one_class = V.judge(ref, {"mean_iou": 59.9, "iou": [71.0, 48.8, None]}, names, tol)
    assert not one_class["qualified"] and one_class["worst_class"] == "b"
    assert one_class["worst_class_delta"] == pytest.approx(-1.2) and "b IoU -1.20" in one_class["reason"]
    assert V.judge(ref, {"mean_iou": 59.5, "iou": [69.5, 49.5, None]}, names, V.Tolerance(0.6, 1.0))["qualified"]
    with pytest.raises(ConfigError, match="--max-miou-drop"):
        V.Tolerance(-1, 1)


def _fake_scores(monkeypatch, drop: float):
    """Eager fp32 scores 60; every other engine 60 - drop."""

    def score(engine, data, **k):
        base = 60.0 if getattr(engine, "name", "") == "torch" else 60.0 - drop
        return {"mean_iou": base, "iou": [base] * 3}

    monkeypatch.setattr(L, "score_engine", score)
    monkeypatch.setattr(L, "candidate_names", lambda device: ["torch", "onnxruntime (int8)"])
    real_build = L.Engines._build

    def build(self, name):  # the int8 engine without its export and calibration (seconds)
        if name != "onnxruntime (int8)":
            return real_build(self, name)
        fake = real_build(self, "torch")
        fake.name, fake.precision_name = name, "int8"
        return fake

    monkeypatch.setattr(L.Engines, "_build", build)
    # the int8 engine is 10x faster: only the check can keep it out
    monkeypatch.setattr(B, "time_interleaved", lambda runs, x, **k: {n: (0.1 if n == "torch" else 0.01) for n in runs})


@pytest.mark.auto_probe
def test_a_candidate_that_drops_half_a_point_is_refused_even_when_fastest(ckpt, cache, monkeypatch):
    _fake_scores(monkeypatch, 0.5)
    auto = L.load_engine(ckpt, "auto")
    ev = auto.evidence
    assert ev["choice"] == "torch" and auto.allowed == ["torch"]
    cand = ev["candidates"]["onnxruntime (int8)"]
    assert cand["qualified"] is False and cand["miou_delta"] == -0.5 and "allowed -0.3" in cand["reason"]
    assert ev["checked_on"] == {"data": "synthetic", "split": "val", "images": 6, "of": 6}
    assert "refused: onnxruntime (int8)" in L.summary(ev)


@pytest.mark.auto_probe
def test_a_candidate_within_tolerance_is_chosen_cached_and_reported(ckpt, cache, monkeypatch):
    _fake_scores(monkeypatch, 0.2)
    auto = L.load_engine(ckpt, "auto")
    assert auto.evidence["choice"] == "onnxruntime (int8)" and auto.precision_name == "int8"
    x = torch.randn(1, 3, 64, 80)
    y = auto(x)
    assert y.shape == (1, 3, 64, 80) and B.backend_name(auto) == "auto (onnxruntime (int8))"
    line = L.summary(auto.evidence)
    assert line.startswith("engine: onnxruntime (int8), 10.0x eager fp32") and "(-0.20)" in line
    stored = json.loads((cache / "engines.json").read_text())
    (entry,) = stored.values()
    assert entry["choice"] == "onnxruntime (int8)" and entry["candidates"]["torch"]["mean_iou"] == 60.0
    # a second process: no scoring, no timing, the same choice
    monkeypatch.setattr(L, "score_engine", lambda *a, **k: pytest.fail("scored again"))
    again = L.load_engine(ckpt, "auto")
    assert again.evidence["choice"] == "onnxruntime (int8)" and again.evidence["cached"] is True
    # other limits are another check
    monkeypatch.setattr(L, "score_engine", lambda e, d, **k: {"mean_iou": 60.0 if e.name == "torch" else 59.8, "iou": [60.0] * 3})
    strict = L.load_engine(ckpt, "auto", tolerance=V.Tolerance(0.1, 1.0))
    assert strict.evidence["choice"] == "torch"


@pytest.mark.auto_probe
def test_without_labelled_data_only_exact_engines_and_default_torch(ckpt, cache, monkeypatch, tmp_path):
    monkeypatch.setattr(L, "score_engine", lambda *a, **k: pytest.fail("nothing to score on"))
    away = {**ckpt, "config": {"data": "folder", "data_root": str(tmp_path / "gone")}}
    auto = L.load_engine(away, "auto")
    assert auto.evidence["checked_on"] is None and "no labelled data" in auto.evidence["note"]
    assert not any(n.endswith("(int8)") for n in auto.allowed)
    assert set(auto.allowed) - set(L.EXACT) <= {"torch (bf16)"}  # torch's own default where native
    # naming data that is not there is the user's error: one line
    with pytest.raises(FcnsegError, match="gone"):
        L.load_engine(away, "auto", data="folder", data_root=str(tmp_path / "gone"))


def test_cache_entry_that_does_not_match_its_sha256_is_exported_again(ckpt, cache, caplog):
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    path = XC.cached_onnx(model.eval(), ckpt)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated (or replaced) in the cache
    with caplog.at_level("WARNING"):
        again = XC.cached_onnx(model.eval(), ckpt)
    assert again == path and path.read_bytes() != good[: len(good) // 2]
    assert XC.sha256_file(path) == (path.parent / (path.name + ".sha256")).read_text().strip()
    assert any("does not match its SHA-256" in r.getMessage() for r in caplog.records)


def test_onnx_file_of_another_model_or_truncated_is_refused(ckpt, tmp_path, capsys):
    from fcnseg.export import export_onnx

    # the module's model exported; the checkpoint evaluated with it holds other weights
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    res = export_onnx(ckpt, tmp_path / "theirs.onnx", model=model, sizes=((64, 64),))
    assert (res.path.stat().st_mode & 0o777) == 0o644
    other = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear")
    torch.save({**ckpt, "model": other.state_dict()}, tmp_path / "m.pt")
    common = ["eval", "--checkpoint", str(tmp_path / "m.pt"), "--tta", "none", "--crf", "none", "--backend", "onnxruntime"]
    assert main([*common, "--onnx", str(res.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"was exported from model {B.model_hash(model)}" in err and f"the checkpoint is model {B.model_hash(other)}" in err and "\n" not in err
    (tmp_path / "junk.onnx").write_bytes(res.path.read_bytes()[:1000])
    assert main([*common, "--onnx", str(tmp_path / "junk.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.onnx" in err and "export it again" in err and "\n" not in err


def test_int8_export_keeps_sensitive_layers_fp32_until_it_passes_or_refuses(ckpt, tmp_path, monkeypatch, capsys):
    import fcnseg.inference.verify as verify
    from fcnseg.export import ExportError, export, read_metadata

    torch.save(ckpt, tmp_path / "m.pt")
    real = verify.judge
    calls = []

    def fails_first(ref, cand, classes, tol):
        calls.append(1)
        v = real(ref, cand, classes, tol)
        return v if len(calls) > 1 else {**v, "qualified": False, "reason": "forced"}

    monkeypatch.setattr(verify, "judge", fails_first)
    res = export(tmp_path / "m.pt", int8=True, out=tmp_path / "m.int8.onnx", calib_images=4)
    card = json.loads(res.card.read_text())
    tries = card["task_check"]["tries"]
    assert [len(t["fp32_layers"]) for t in tries] == [0, 1]
    assert card["onnx"]["fp32_layers"] == tries[1]["fp32_layers"] == read_metadata(res.path)["quantization"]["fp32_nodes"]
    assert card["task_check"]["checked_on"]["data"] == "synthetic"
    monkeypatch.setattr(verify, "judge", lambda ref, cand, classes, tol: {**real(ref, cand, classes, tol), "qualified": False})
    import fcnseg.export as E

    monkeypatch.setattr(E, "FP32_LAYER_STEPS", (0, 1))
    out = tmp_path / "never.int8.onnx"
    with pytest.raises(ExportError, match=r"int8 does not reach fp32 .*0 fp32 layers: .*1 fp32 layers"):
        export(tmp_path / "m.pt", int8=True, out=out, calib_images=4)
    assert not out.exists()


def test_tta_views_batched_equal_the_views_one_by_one():
    """The plain and mirrored views of each scale run as one batch; the averaged
    probabilities equal those of the views run one at a time."""
    from fcnseg.inference.segment import segment

    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear").eval()
    images = [torch.randn(3, 45, 61), torch.randn(3, 45, 61)]
    calls = []

    def engine(x):
        calls.append(x.shape[0])
        with torch.no_grad():
            return model(x)

    out = segment(engine, images, tta="flip,scales=0.5,1", out_sizes=[(40, 50)] * 2)
    assert calls == [4, 4]  # 2 images x (plain + mirrored), per scale
    for i, im in enumerate(images):
        views = []
        for s in (0.5, 1.0):
            x = torch.nn.functional.interpolate(im[None], size=(round(45 * s), round(61 * s)), mode="bilinear", align_corners=False) if s != 1 else im[None]
            for flip in (False, True):
                with torch.no_grad():
                    lg = model(x.flip(-1) if flip else x)
                lg = lg.flip(-1) if flip else lg
                views.append(torch.nn.functional.interpolate(lg, size=(40, 50), mode="bilinear", align_corners=False)[0].softmax(0))
        ref = torch.stack(views).mean(0)
        assert float((out[i] - ref).abs().max()) <= 1e-5


def test_labels_equal_argmax_including_ties():
    from fcnseg.inference.segment import labels

    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 37, 53, generator=g)
    assert torch.equal(labels(x), x.argmax(0))
    tied = torch.zeros(4, 5, 6)
    tied[1:3] = 1.0  # classes 1 and 2 tie everywhere: the first maximum, as argmax
    assert torch.equal(labels(tied), tied.argmax(0)) and int(labels(tied).max()) == 1


def test_the_bf16_candidate_leaves_the_fp32_reference_as_it_was():
    """torch (bf16) runs channels_last: it gets its own copy of the model, so the eager fp32
    reference that every inexact candidate is scored against keeps its layout and weights."""
    from fcnseg.precision import resolve_precision

    try:
        resolve_precision("bf16", torch.device("cpu"), quiet=True)
    except ConfigError:
        pytest.skip("this CPU does not run bf16")
    model = build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear").eval()
    engines = L.Engines(model, None, torch.device("cpu"))
    fp32 = engines("torch")
    conv = fp32.model.backbone.conv1.weight
    before = (conv.is_contiguous(), conv.is_contiguous(memory_format=torch.channels_last), conv.clone())
    engines("torch (bf16)")
    conv = fp32.model.backbone.conv1.weight
    assert (conv.is_contiguous(), conv.is_contiguous(memory_format=torch.channels_last)) == before[:2]
    assert torch.equal(conv, before[2]) and engines.built["torch (bf16)"].model is not fp32.model


def test_a_costly_model_is_checked_on_fewer_images_but_never_under_the_minimum():
    from fcnseg.data import build_dataset

    ds = build_dataset("synthetic", size=[16, 16], length=60)
    task = V.TaskData("synthetic", "val", ds, V.spread(len(ds), 48))
    assert L.fit_check(task, 0.05, 4) is task  # a CamVid-sized model: all 48
    slow = L.fit_check(task, 2.0, 4)  # ~2 s an image: 120 s / (2 s x (1 + 4 x 0.6)) = 17 images
    assert len(slow.indices) == 17 and slow.indices[0] == task.indices[0] and slow.indices[-1] == task.indices[-1]
    assert set(slow.indices) <= set(task.indices) and slow.describe()["of"] == 60
    crawl = L.fit_check(task, 100.0, 4)
    assert len(crawl.indices) == V.MIN_CHECK_IMAGES
    assert [int(m.sum()) for m in crawl.masks] == [int(task.masks[task.indices.index(i)].sum()) for i in crawl.indices]


def test_the_check_sees_the_images_at_the_scale_the_run_evaluates_at(ckpt):
    from fcnseg.inference.specs import eval_scale

    assert eval_scale("auto", [0.375, 0.625]) == 0.5 and eval_scale("flip,scales=0.5,1,2", None) == 1.0
    assert eval_scale(None, [0.5, 0.5]) == 1.0 and eval_scale("auto", None) == 1.0
    small = {**ckpt, "config": {**ckpt["config"], "eval_tta": "flip,scales=0.5", "data_options": {"size": [64, 80], "length": 6}}}
    task = V.task_data(small, count=4)
    full = V.task_data(ckpt, count=4)
    assert task.scale == 0.5 and full.scale == 1.0
    assert tuple(task.images[0].shape[-2:]) == (32, 40) and tuple(full.images[0].shape[-2:]) == (64, 80)
    assert tuple(task.masks[0].shape) == (64, 80) and task.key() != full.key() and task.describe()["scale"] == 0.5
    # an engine that marks every pixel class 1 scores the same at either scale only if the
    # half-size maps are scored at the labels' full size
    def constant(x):
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, 1] = 1.0
        return out

    assert V.score_engine(constant, task)["mean_iou"] == pytest.approx(V.score_engine(constant, full)["mean_iou"], abs=1e-9)
    assert V.score_engine(constant, task)["mean_iou"] > 0  # class 1 is in the labels: a real score, not an empty one
    assert task.subset(2).scale == 0.5
