"""ONNX export (verified before writing) and the inference backends built on it.

The default tests export one small model once (FCN-8s/ResNet-18, bilinear, 3 classes) and
run it through onnxruntime, OpenVINO, the auto backend, TTA, sliding windows and evaluation;
the sweep over every model x upsampling mode (and align=paper) is a slow test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from fcnseg.cli import main  # noqa: E402
from fcnseg.errors import ConfigError  # noqa: E402
from fcnseg.export import (  # noqa: E402
    MIN_AGREEMENT,
    RTOL,
    ExportError,
    compare,
    export_onnx,
    parity_inputs,
    read_metadata,
)
from fcnseg.export import cache as XC  # noqa: E402
from fcnseg.inference import backends as B  # noqa: E402
from fcnseg.inference.loader import load_engine  # noqa: E402
from fcnseg.inference.segment import segment  # noqa: E402
from fcnseg.models import build_model  # noqa: E402

SMALL_SIZES = ((65, 79), (96, 128))
CLASSES = ["pet", "background", "border"]


def _randomise_scores(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Score layers are zero-initialised; give them weights so the logits vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[0].startswith("score") and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _checkpoint(model) -> dict:
    return {
        "model": model.state_dict(),
        "model_config": model.config,
        "classes": CLASSES,
        "palette": [[255, 0, 0], [0, 0, 0], [255, 255, 255]],
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "config": {"data": "synthetic", "data_options": {"size": [72, 88], "length": 6}},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomise_scores(build_model("fcn8s", backbone="resnet18", num_classes=3, upsample="bilinear"))
    ckpt = _checkpoint(model)
    out = tmp_path_factory.mktemp("export") / "fcn8s.onnx"
    res = export_onnx(ckpt, out, sizes=SMALL_SIZES, model=model)
    return model, ckpt, res


@pytest.fixture
def cache(tmp_path, monkeypatch, exported):
    """An empty fcnseg cache holding the fixture's export under its checkpoint hash."""
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    model, _, res = exported
    (tmp_path / "cache" / "onnx").mkdir(parents=True)
    shutil.copy(res.path, tmp_path / "cache" / "onnx" / f"{B.model_hash(model)}.onnx")
    XC._seal(tmp_path / "cache" / "onnx" / f"{B.model_hash(model)}.onnx")
    return tmp_path / "cache"


def test_export_writes_verified_file_with_metadata(exported):
    model, ckpt, res = exported
    assert res.path.is_file()
    assert len(res.parity) == 3  # two sizes and a batch of 2
    assert "1x65x79, 2x65x79, 1x96x128 (NxHxW)" in res.summary()
    assert all(p.rel <= RTOL and p.agreement >= MIN_AGREEMENT for p in res.parity)
    meta = read_metadata(res.path)
    assert meta["classes"] == CLASSES
    assert meta["palette"][0] == [255, 0, 0]
    assert meta["mean"] == [0.5, 0.4, 0.3] and meta["std"] == [0.2, 0.25, 0.3]
    assert "RGB" in meta["input"] and "/ 255" in meta["input"]
    assert meta["model_config"] == json.loads(json.dumps(model.config))
    assert len(meta["parity"]) == 3
    import onnx

    dims = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]


def test_exported_file_runs_any_batch_and_odd_size(exported):
    """Dynamic batch/height/width: a size and batch the export never saw."""
    model, _, res = exported
    run = B.OnnxRuntimeBackend(res.path)
    x = parity_inputs(((45, 67),))[0].repeat(3, 1, 1, 1) * torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1)
    with torch.no_grad():
        ref = model(x)
    p = compare(ref, run(x))
    assert p.size == (3, 3, 45, 67)
    assert p.rel <= RTOL and p.agreement >= MIN_AGREEMENT


def test_compare_allows_switch_flips_only_with_unpooling():
    """A few pixels moved by a flipped max-pooling switch pass for a model with max-unpooling
    (up to SWITCH_FLIP_PIXELS of the pixels), never for one without; many pixels never pass."""
    from fcnseg.export import SWITCH_FLIP_PIXELS, switch_flips_allowed

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 50, 60, generator=g)
    out = ref + 1e-7 * torch.randn(ref.shape, generator=g)
    out[0, :, 10, 20] += 0.2  # one pixel's logits moved (argmax may or may not change)
    unpool = build_model("fcn8s", backbone="resnet18", num_classes=4, upsample="unpool")
    plain = build_model("fcn8s", backbone="resnet18", num_classes=4, upsample="bilinear")
    assert switch_flips_allowed(unpool) == SWITCH_FLIP_PIXELS and switch_flips_allowed(plain) == 0.0
    p = compare(ref, out, switch_flips_allowed(unpool))
    assert p.rel > RTOL and p.off_pixels == pytest.approx(1 / (2 * 50 * 60))
    assert p.ok and "0.017 % of the pixels" in str(p) and "switch flips" in str(p)
    assert not compare(ref, out, switch_flips_allowed(plain)).ok
    worse = out.clone()
    worse[1, :, :10, :] += 0.2  # a wrong export: 10 rows of a frame
    p = compare(ref, worse, SWITCH_FLIP_PIXELS)
    assert not p.ok and p.off_pixels > 0.08


def test_failed_check_is_an_error_with_figures_and_writes_nothing(exported, tmp_path, monkeypatch):
    import fcnseg.export.onnx as E

    model, ckpt, res = exported
    import onnx

    proto = onnx.load(str(res.path))
    monkeypatch.setattr(E, "trace_onnx", lambda *a, **k: proto)
    real = E.ort_runner

    def off_by_a_bit(session):
        run = real(session)
        return lambda x: run(x) * 1.001  # 1e-3 relative: over the 1e-4 tolerance
    monkeypatch.setattr(E, "ort_runner", off_by_a_bit)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"does not match PyTorch.*max\|Δlogit\|.*argmax agreement.*nothing written"):
        export_onnx(ckpt, out, sizes=SMALL_SIZES[:1], model=model)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_cli_errors_are_one_line(tmp_path, capsys, exported):
    _, ckpt, _ = exported
    torch.save(ckpt, tmp_path / "m.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnseg export: error:") and "NAME.onnx" in err and "\n" not in err
    torch.save({**ckpt, "config": {}}, tmp_path / "nodata.pt")  # no run data to calibrate on
    assert main(["export", "--checkpoint", str(tmp_path / "nodata.pt"), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--calib-data" in err and "\n" not in err
    assert main(["export", "--checkpoint", str(tmp_path / "m.pt"), "--opset", "9"]) == 2
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_package_is_a_one_line_error_with_pip(monkeypatch, exported):
    model, _, _ = exported
    monkeypatch.setattr(B, "installed_pkg", lambda p: p != "openvino")
    monkeypatch.setattr(B, "installed", lambda name: name != "openvino")
    with pytest.raises(ConfigError, match=r'openvino.*not installed.*pip install -e "\.\[export\]"'):
        load_engine(model, "openvino")


def test_backend_argument_errors(exported):
    model, _, res = exported
    with pytest.raises(ConfigError, match="unknown backend"):
        load_engine(model, "tensorrt")
    with pytest.raises(ConfigError, match="runs fp32"):
        load_engine(model, "onnxruntime", precision="bf16", onnx_path=res.path)
    with pytest.raises(ConfigError, match="--onnx"):
        load_engine(model, "torch", onnx_path=res.path)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_tta_sliding_window_and_crf_work_with_every_backend(exported, name):
    if name == "openvino":
        pytest.importorskip("openvino")
    model, _, res = exported
    backend = load_engine(model, name, onnx_path=res.path)
    torch_fp32 = load_engine(model, "torch", precision="fp32")
    images = [parity_inputs(((70, 90),), seed=s)[0][0] for s in (1, 2)]
    kw = dict(tta="flip", sliding_window=64, crf="default", std=(0.2, 0.25, 0.3), out_sizes=[(80, 100)] * 2)
    ref = segment(torch_fp32, images, **kw)
    out = segment(backend, images, **kw)
    for r, o in zip(ref, out, strict=True):
        assert o.shape == r.shape == (3, 80, 100)
        assert float((r - o).abs().max()) <= 1e-4  # probabilities
        assert float((r.argmax(0) == o.argmax(0)).float().mean()) >= MIN_AGREEMENT


@pytest.mark.auto_probe
def test_auto_probes_once_verifies_and_caches(exported, cache, monkeypatch):
    model, ckpt, _ = exported
    auto = load_engine(model, "auto")  # a bare module: no labelled data, so no task check
    auto.allowed = ["torch", "onnxruntime"]  # the exact engines only
    x = parity_inputs(((64, 80),))[0]
    with torch.no_grad():
        ref = model(x)
    p = compare(ref, auto(x))
    assert p.rel <= RTOL and p.agreement >= MIN_AGREEMENT
    (entry,) = auto.report.values()
    assert entry["backend"] in ("torch", "onnxruntime")
    assert {"torch", "onnxruntime"} <= set(entry["figures"])
    assert all(f["verified"] for f in entry["figures"].values())
    stored = json.loads((cache / "auto.json").read_text())
    (key,) = stored
    assert B.model_hash(model) in key and "threads=" in key and "torch " in key
    # a second process reads the choice from the cache without probing
    auto2 = load_engine(model, "auto")
    auto2.allowed = ["torch", "onnxruntime"]
    monkeypatch.setattr(B, "time_interleaved", lambda *a, **k: pytest.fail("probed again"))
    assert auto2.choose(x) == entry["backend"]


@pytest.mark.auto_probe
def test_auto_never_picks_an_unverified_backend(exported, cache, monkeypatch):
    """A faster engine whose logits differ is reported and not used: 0 silent mismatches."""
    model, ckpt, _ = exported
    auto = load_engine(model, "auto")
    auto.allowed = ["torch", "onnxruntime"]
    wrong = B.OnnxRuntimeBackend(cache / "onnx" / f"{B.model_hash(model)}.onnx")
    auto.engines.built["onnxruntime"] = lambda x: wrong(x) + 0.01 * wrong(x).abs().max()
    # torch slow, the wrong engine fast
    monkeypatch.setattr(B, "time_interleaved", lambda runs, x, **k: {"torch": 0.5, "onnxruntime": 0.001})
    assert auto.choose(parity_inputs(((64, 80),))[0]) == "torch"
    (entry,) = auto.report.values()
    assert entry["figures"]["onnxruntime"]["verified"] is False


@pytest.mark.auto_probe
@pytest.mark.parametrize(("ort_s", "chosen"), [(0.09, "torch"), (0.05, "onnxruntime")])
def test_auto_keeps_torch_unless_an_engine_with_a_session_gains_enough(exported, cache, monkeypatch, ort_s, chosen):
    """An engine that pays a session start-up in every command must beat eager torch by MIN_GAIN
    (1.11x: torch; 2x: onnxruntime)."""
    from fcnseg.inference.loader import MIN_GAIN, fastest

    model, _, _ = exported
    auto = load_engine(model, "auto")
    auto.allowed = ["torch", "onnxruntime"]
    monkeypatch.setattr(B, "time_interleaved", lambda runs, x, **k: {"torch": 0.1, "onnxruntime": ort_s})
    x = parity_inputs(((64, 96),))[0]
    assert auto.choose(x) == chosen
    # a choice cached by a version without the margin is read under this one's rule
    store = cache / "auto.json"
    stored = json.loads(store.read_text())
    for entry in stored.values():
        entry["backend"] = "onnxruntime"
    store.write_text(json.dumps(stored))
    again = load_engine(model, "auto")
    again.allowed = ["torch", "onnxruntime"]
    monkeypatch.setattr(B, "time_interleaved", lambda *a, **k: pytest.fail("probed again"))
    assert again.choose(x) == chosen
    assert 1.1 < MIN_GAIN < 2.0
    assert fastest({"torch": 100.0, "openvino": 99.0 / MIN_GAIN}) == "openvino"
    assert fastest({"torch": 100.0, "openvino": 101.0 / MIN_GAIN}) == "torch"
    # torch in bf16 has no session to start: the fastest torch engine is the reference
    assert fastest({"torch": 100.0, "torch (bf16)": 50.0, "onnxruntime (int8)": 45.0}) == "torch (bf16)"
    assert fastest({"onnxruntime": 50.0, "openvino": 40.0}) == "openvino"


def test_auto_times_the_engines_in_turns():
    """The probe's rounds call every engine once, in turn (a slow spell hits all alike)."""
    calls = []
    runs = {name: (lambda x, name=name: calls.append(name)) for name in ("a", "b")}
    out = B.time_interleaved(runs, torch.zeros(1), rounds=3)
    assert calls == ["a", "b"] * 3 and set(out) == {"a", "b"} and all(t >= 0 for t in out.values())


def test_onnxruntime_sessions_do_not_spin(exported):
    """fcnseg's onnxruntime sessions turn busy-waiting off (experiments/ort_spinning.py)."""
    from fcnseg.inference.backends import ort_session

    sess = ort_session(exported[2].path)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_is_torch_when_there_is_nothing_to_choose(monkeypatch):
    """auto chooses only among fp32 CPU engines that are installed; else it is torch, in the
    precision asked."""
    monkeypatch.setattr(B, "AUTO_CANDIDATES", ("torch", "onnxruntime", "openvino"))
    assert B.resolve_backend("auto", "cpu", "auto") == "auto"  # onnxruntime is installed (importorskip)
    assert B.resolve_backend("auto", "cpu", "fp32") == "auto"
    assert B.resolve_backend("auto", "cpu", "bf16") == "torch"  # only torch runs bf16
    assert B.resolve_backend("auto", "cuda", "auto") == "torch"
    assert B.resolve_backend("onnxruntime", "cpu", "auto") == "onnxruntime"
    monkeypatch.setattr(B, "installed", lambda name: False)  # no export extra
    assert B.resolve_backend("auto", "cpu", "fp32") == "torch"
    model = build_model("fcn8s", backbone="resnet18", num_classes=3)
    assert isinstance(load_engine(model, "auto", precision="bf16"), B.TorchBackend)


@pytest.mark.auto_probe
def test_auto_is_the_default_of_eval_and_predict(exported, cache, tmp_path, capsys):
    """Without --backend, eval and predict run `auto`: it probes, picks a verified engine and
    says which; predict's masks equal eager fp32's."""
    from PIL import Image

    _, ckpt, _ = exported
    torch.save(ckpt, tmp_path / "m.pt")
    common = ["--checkpoint", str(tmp_path / "m.pt"), "--tta", "none", "--crf", "none"]
    assert main(["eval", *common, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["backend"].startswith("auto ("), res["backend"]
    chosen = res["backend"].removeprefix("auto (").removesuffix(")")
    ev = res["engine"]
    assert ev["choice"] == chosen and ev["candidates"][chosen]["qualified"] is True
    assert ev["checked_on"]["data"] == "synthetic" and ev["checked_on"]["split"] == "val"
    assert ev["summary"].startswith(f"engine: {chosen}")
    assert res["precision"] == B.precision_of(chosen)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 52, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", *common, str(tmp_path / "a.png"), "--out", str(tmp_path / "auto")]) == 0
    assert main(["predict", *common, str(tmp_path / "a.png"), "--out", str(tmp_path / "torch"), "--backend", "torch", "--precision", "fp32"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n / "a.png")) for n in ("auto", "torch"))
    assert a.shape == b.shape == (40, 52) and a.max() < 3
    if B.precision_of(chosen) == "fp32":  # an exact engine: the same masks
        assert (a == b).mean() >= MIN_AGREEMENT


def test_evaluate_same_mean_iu_on_every_backend(exported):
    """`evaluate` through each backend gives the same mean IU (within 0.05 points)."""
    from fcnseg.data import build_dataset
    from fcnseg.inference.evaluate import evaluate

    model, ckpt, res = exported
    ds = build_dataset("synthetic", split="val", size=(72, 88), length=4)
    names = ["torch", "onnxruntime"] + (["openvino"] if B.installed("openvino") else [])
    scores = {}
    for name in names:
        backend = load_engine(model, name, "fp32", onnx_path=None if name == "torch" else res.path)
        r = evaluate(backend, ds, mean=ckpt["mean"], std=ckpt["std"], tta="flip", batch_size=2)
        scores[name] = 100 * r["mean_iou"]
    assert np.isfinite(scores["torch"]) and scores["torch"] > 0
    for name in names[1:]:
        assert abs(scores[name] - scores["torch"]) <= 0.05, scores


# --- the full sweep: every shipped model x upsampling mode, and the Caffe geometry ------------

SWEEP = [
    (m, b, u, "same") for m in ("fcn32s", "fcn16s", "fcn8s", "fcn4s", "seed") for b in ("resnet18",) for u in ("deconv", "bilinear", "unpool")
] + [(m, "vgg16", u, "paper") for m in ("fcn32s", "fcn16s", "fcn8s") for u in ("deconv", "bilinear", "unpool")] + [
    # the mirrored batch-2 input flips 2 max-pooling switches (as torch channels_last does): passes
    # through the switch-flip allowance (test_compare_allows_switch_flips_only_with_unpooling)
    ("fcn8s", "vgg16", "unpool", "same"),
    ("seed", "vgg16", "deconv", "same"),
    ("fcn8s", "vgg16_bn", "deconv", "same"),
    ("fcn8s", "resnet50", "deconv", "same"),
    ("fcn8s", "resnet18", "bilinear", 8),
    ("fcn16s", "resnet18", "unpool", 16),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,backbone,upsample,align", SWEEP, ids=lambda v: str(v))
def test_every_model_exports_verified(tmp_path, name, backbone, upsample, align):
    stride = align if isinstance(align, int) else 32
    align = "same" if isinstance(align, int) else align
    torch.manual_seed(0)
    model = _randomise_scores(
        build_model(name, backbone=backbone, num_classes=5, upsample=upsample, align=align, output_stride=stride)
    )
    res = export_onnx(_checkpoint(model) | {"classes": list("abcde")}, tmp_path / "m.onnx", model=model, sizes=((97, 131), (64, 64)))
    assert all(p.ok for p in res.parity), [str(p) for p in res.parity]


def test_int8_quantization_writes_a_runnable_file_with_metadata(exported, tmp_path):
    from fcnseg.export import quantize_onnx

    model, _, res = exported
    calib = [parity_inputs(((65, 79),), seed=s)[0][0] for s in range(4)]
    out, parity = quantize_onnx(res.path, tmp_path / "m.int8.onnx", calib, model=model, check_images=calib[:1])
    meta = read_metadata(out)
    assert meta["quantization"]["calibration_images"] == 4 and meta["classes"] == CLASSES
    (p,) = parity
    assert p.size == (1, 3, 65, 79) and 0.0 <= p.agreement <= 1.0
    y = B.OnnxRuntimeBackend(out)(parity_inputs(((50, 70),))[0])
    assert y.shape == (1, 3, 50, 70) and torch.isfinite(y).all()
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("features,bits", [(["avx2"], 7), (["avx2", "avx512f", "avx512_vnni"], 8)])
def test_int8_weights_use_7_bits_on_cpus_without_an_int8_dot_product(exported, cache, monkeypatch, caplog, features, bits):
    """Without VNNI/AMX onnxruntime's uint8 x int8 kernel adds pairs of products in 16 bits and
    saturates with full-range weights: the quantized weights must then lie in 7 bits, in a cache
    file of their own (a cache shared by two kinds of CPU never hands one the other's file)."""
    import onnx
    from onnx import numpy_helper

    import fcnseg.precision as P
    from fcnseg.export.cache import cached_int8

    monkeypatch.setattr(P, "cpu_features", lambda: features)
    model, ckpt, _ = exported
    calib = [parity_inputs(((65, 79),), seed=s)[0][0] for s in range(2)]
    out = cached_int8(model, ckpt, lambda: calib)
    assert out.name == f"{B.model_hash(model)}.int8{'' if bits == 8 else 'w7'}.onnx"
    proto = onnx.load(str(out))
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4]
    assert weights
    top = max(int(abs(w.astype(np.int32)).max()) for w in weights)
    assert top <= 2 ** (bits - 1) and top > 2 ** (bits - 2)
    assert read_metadata(out)["quantization"]["weights"] == f"per-channel int8, {bits}-bit range"
    # run on a CPU without VNNI/AMX: an 8-bit file is flagged, with the mend; a 7-bit one is not
    monkeypatch.setattr(P, "cpu_features", lambda: ["avx2"])
    with caplog.at_level("WARNING", logger="fcnseg"):
        B.OnnxRuntimeBackend(out)
    warned = [r.getMessage() for r in caplog.records if "8-bit weights" in r.getMessage()]
    assert len(warned) == (bits == 8) and all(out.name in m and "fcnseg export --int8" in m for m in warned)


def test_only_the_engine_that_runs_logs_its_precision(exported, caplog, monkeypatch):
    """A non-torch backend logs no torch precision line (it printed 'precision: bf16' then
    'precision: fp32 (--precision fp32)' for an engine that runs neither); torch still does."""
    import logging

    import fcnseg.precision as P
    from fcnseg.inference.evaluate import evaluate_checkpoint

    _, ckpt, res = exported
    monkeypatch.setattr(P, "_told", set())
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        out = evaluate_checkpoint(ckpt, backend="onnxruntime", onnx_path=res.path, tta=None, crf=None, max_images=1, device="cpu")
    assert out["backend"] == "onnxruntime" and out["precision"] == "fp32"
    assert not [r for r in caplog.records if r.getMessage().startswith("precision:")]
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        evaluate_checkpoint(ckpt, backend="torch", precision="fp32", tta=None, crf=None, max_images=1, device="cpu")
    assert [r for r in caplog.records if r.getMessage().startswith("precision: fp32")]


def test_predict_and_eval_cli_with_an_onnx_backend(exported, tmp_path, capsys):
    """`--backend onnxruntime --onnx FILE` writes the same masks as eager fp32; eval's JSON
    names the backend."""
    from PIL import Image

    _, ckpt, res = exported
    torch.save(ckpt, tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (41, 57, 3), np.uint8)).save(tmp_path / "a.png")
    common = ["--checkpoint", str(tmp_path / "m.pt"), "--tta", "none", "--crf", "none"]
    for name, extra in (("torch", ["--precision", "fp32"]), ("onnxruntime", ["--onnx", str(res.path)])):
        argv = ["predict", *common, str(tmp_path / "a.png"), "--out", str(tmp_path / name), "--backend", name, *extra]
        assert main(argv) == 0
    a, b = (np.asarray(Image.open(tmp_path / n / "a.png")) for n in ("torch", "onnxruntime"))
    assert a.shape == (41, 57) and (a == b).mean() >= MIN_AGREEMENT
    capsys.readouterr()
    argv = ["eval", *common, "--backend", "onnxruntime", "--onnx", str(res.path), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "onnxruntime" and out["precision"] == "fp32" and out["num_images"] == 6
