"""Shared test fixtures. Real data in ../shared/data is optional: tests using it skip when absent."""

from pathlib import Path

import pytest
import torch
from datagen import (  # noqa: F401  tiny datasets in each real layout (tests/datagen.py)
    camvid_root,
    cityscapes_root,
    folder_root,
    pet_root,
    sbd_root,
    voc_root,
)

from fcnseg.training.schedule import CKPT_OVERHEAD

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


_REAL_AUTO_CANDIDATES: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def _auto_backend_without_probe(tmp_path_factory):
    """`--backend auto` (the default of eval, predict and serve) exports and times every engine
    at each new checkpoint: tests of other things (module fixtures included) run it as torch,
    as without the export extra; tests marked ``auto_probe`` let it choose. The cache never
    touches ~/.cache."""
    from fcnseg.inference import backends

    _REAL_AUTO_CANDIDATES[:] = backends.AUTO_CANDIDATES
    mp = pytest.MonkeyPatch()
    mp.setenv("FCNSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fcnseg-cache"))
    mp.setattr(backends, "AUTO_CANDIDATES", ("torch",))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _auto_probe(request, monkeypatch):
    if request.node.get_closest_marker("auto_probe") is not None:
        from fcnseg.inference import backends

        monkeypatch.setattr(backends, "AUTO_CANDIDATES", tuple(_REAL_AUTO_CANDIDATES))


_TRACES: dict = {}


@pytest.fixture(autouse=True, scope="session")
def _one_onnx_trace_per_model():
    """The ONNX exporter's trace of one model (the same weights, opset and input channels) is
    the same file every time, and takes ~20 s on 2 cores of an AMD EPYC [AVX2 only: no AVX-512, no native bf16]: the session traces each
    model once and hands later exports a copy (their checks, metadata and writes still run).
    Tests that replace ``trace_onnx`` themselves replace this too."""
    try:
        import onnx
    except ImportError:
        yield
        return
    from fcnseg.export import onnx as export_onnx_module
    from fcnseg.inference.backends import model_hash

    real = export_onnx_module.trace_onnx

    def trace_once(model, *, opset=export_onnx_module.DEFAULT_OPSET, in_channels=3):
        key = (model_hash(model), opset, in_channels)
        if key not in _TRACES:
            _TRACES[key] = real(model, opset=opset, in_channels=in_channels).SerializeToString()
        return onnx.load_from_string(_TRACES[key])

    mp = pytest.MonkeyPatch()
    mp.setattr(export_onnx_module, "trace_onnx", trace_once)
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _no_fsync():
    """Checkpoints and exports are fsynced (file and folder) so that a power cut leaves the old
    file or the new one; no test can cut the power, and the fsyncs took ~0.1 s a checkpoint of
    the tests' 134 MB ResNet-18 runs on an AMD EPYC [AVX2 only: no AVX-512, no native bf16]:
    in this process the session skips them (the write, rename and crash tests still run; the
    tests' subprocesses still fsync): tests/test_train.py 182 -> 161 s there."""
    import os

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "fsync", lambda fd: None)
    yield
    mp.undo()


# the product's value, for the test of its rule (the session replaces it, below)
PRODUCT_CKPT_OVERHEAD = CKPT_OVERHEAD


@pytest.fixture(autouse=True, scope="session")
def _last_pt_at_every_epoch_end():
    """The tests resume runs from the checkpoint of any epoch end (their epochs take well under
    a second): the session writes last.pt at every one, as ``CKPT_OVERHEAD = inf`` says; the
    product's rule (at most ~5 % of the time on epoch-end checkpoints) has its own test
    (test_train.py::test_epoch_end_checkpoints_cost_at_most_ckpt_overhead_of_the_run)."""
    import math

    from fcnseg.training import schedule

    mp = pytest.MonkeyPatch()
    mp.setattr(schedule, "CKPT_OVERHEAD", math.inf)
    yield
    mp.undo()
