"""`fcnseg serve`: the API in-process (masks equal `fcnseg predict`'s, every bad input answered
with JSON and the right status, never a 5xx on fuzzed uploads), and the web page end to end in
headless Chromium against a real uvicorn server. Skips without the `.[serve]` extra."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason='the serving extra is not installed (pip install -e ".[serve]")')
httpx = pytest.importorskip("httpx", reason='the serving extra is not installed (pip install -e ".[serve]")')

with warnings.catch_warnings():  # Starlette's TestClient warns that it still uses httpx
    warnings.filterwarnings("ignore", message=".*httpx.*deprecated")
    from fastapi.testclient import TestClient  # noqa: E402

from fcnseg.checkpoint import save_checkpoint  # noqa: E402
from fcnseg.cli import main  # noqa: E402
from fcnseg.models import build_model  # noqa: E402
from fcnseg.serve.app import create_app  # noqa: E402

CLASSES = ["pet", "background", "border"]
PALETTE = np.array([[220, 40, 40], [40, 40, 160], [240, 200, 0]], np.uint8)
MAX_PIXELS = 200_000
MAX_UPLOAD_MB = 0.5
PET_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "oxford-pet-mini" / "images" / "Abyssinian_1.jpg"


def write_checkpoint(path: Path, eval_tta: str | None = None) -> Path:
    """FCN-8s / ResNet-18, 3 classes, untrained but with random score layers (FCN zero-
    initialises them, which would make every pixel class 0), so masks follow the image."""
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="resnet18", num_classes=len(CLASSES))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "score" in name and p.dim() == 4:
                p.normal_(0, 0.02)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": CLASSES,
            "palette": PALETTE,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "config": {"eval_tta": eval_tta},
        },
        path,
    )
    return path


def encode(array: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save)
    return buf.getvalue()


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs (so the model gives several classes) plus noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.int16)
    return np.clip(big + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (CRC correct) over a 4x4 image's data."""
    data = encode(image(4, 4))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return data[:8] + chunk + data[8 + 25 :]


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(image(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in r.text and 'File "' not in r.text
    for word in words:
        assert word in body["detail"], body
    return body


TEST_HOSTS = ("testserver", "test")  # the Host of Starlette's TestClient and of the httpx clients below


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory) -> Path:
    # the saved default TTA must apply in the server as in `fcnseg predict`
    return write_checkpoint(tmp_path_factory.mktemp("serve") / "best.pt", eval_tta="flip")


@pytest.fixture(scope="module")
def app(ckpt_file):
    return create_app(
        ckpt_file, device="cpu", max_image_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB,
        workers=1, max_queue=2, warmup_size=(16, 16), allowed_hosts=TEST_HOSTS,
    )


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# ---------------------------------------------------------------------------- the API


def test_model_health_and_spec(client, ckpt_file):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    m = client.get("/v1/model").json()
    assert (m["model"], m["backbone"], m["classes"]) == ("fcn8s", "resnet18", CLASSES)
    assert m["palette"] == PALETTE.tolist()
    assert m["checkpoint"]["sha256"] == hashlib.sha256(ckpt_file.read_bytes()).hexdigest()
    assert m["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    inf = m["inference"]
    assert (inf["tta"], inf["tta_views"], inf["crf"]) == ("flip", 2, None)  # the checkpoint's default
    assert inf["warmup_ms"] > 0 and inf["warmup_size"] == [16, 16]
    assert m["limits"] == {"max_upload_bytes": int(MAX_UPLOAD_MB * 2**20), "max_image_pixels": MAX_PIXELS, "workers": 1, "max_queue": 2,
                           "max_inference_pixels": 4_194_304, "read_timeout_s": 30.0}
    spec = client.get("/openapi.json").json()
    seg = spec["paths"]["/v1/segment"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(seg["requestBody"]["content"])
    assert {"image/png", "application/json", "image/jpeg"} <= set(seg["responses"]["200"]["content"])
    assert {"400", "413", "415", "503"} <= set(seg["responses"])
    assert {"Segmentation", "ErrorBody"} <= set(spec["components"]["schemas"])
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_served_mask_equals_fcnseg_predict(client, ckpt_file, tmp_path):
    """Same file, same settings (the checkpoint's flip TTA): identical class indices, raw body
    and multipart; and the overlay is predict's overlay."""
    rgb = image(45, 67, seed=3)
    path = tmp_path / "odd.jpg"
    Image.fromarray(rgb).save(path, quality=90)
    assert main(["predict", "--checkpoint", str(ckpt_file), str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    expected = Image.open(tmp_path / "out" / "odd.png")
    raw = client.post("/v1/segment", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    served = Image.open(io.BytesIO(raw.content))
    assert served.mode == "P" and served.size == (67, 45)
    assert np.array_equal(np.asarray(served), np.asarray(expected))
    assert served.getpalette()[:9] == PALETTE.reshape(-1).tolist()
    assert len(np.unique(np.asarray(served))) >= 2  # a real test: more than one class
    multi = client.post("/v1/segment", files={"image": ("odd.jpg", path.read_bytes(), "image/jpeg")})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(multi.content))), np.asarray(expected))
    over = client.post("/v1/segment?format=overlay", content=path.read_bytes())
    assert over.headers["content-type"] == "image/jpeg"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(over.content))), np.asarray(Image.open(tmp_path / "out" / "odd_overlay.jpg")))


@pytest.mark.slow  # exports the model to ONNX (~30 s on 2 busy cores)
def test_served_mask_equals_predict_with_onnxruntime_backend(ckpt_file, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason='the export extra is not installed (pip install -e ".[export]")')
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    app = create_app(ckpt_file, device="cpu", backend="onnxruntime", workers=2, warmup_size=(16, 16), allowed_hosts=TEST_HOSTS)
    info = app.state.service.model_info()["inference"]
    assert (info["backend"], info["precision"], info["tta"]) == ("onnxruntime", "fp32", "flip")
    path = tmp_path / "odd.png"
    Image.fromarray(image(45, 67, seed=3)).save(path)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt_file), str(path), "--out", str(out), "--device", "cpu", "--backend", "onnxruntime"]) == 0
    with TestClient(app, raise_server_exceptions=False) as c:
        served = c.post("/v1/segment", content=path.read_bytes())
        assert c.post("/v1/segment", content=encode(image(1, 1))).status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served.content))), np.asarray(Image.open(out / "odd.png")))


def test_json_summary(client):
    rgb = image(40, 50, seed=5)
    r = client.post("/v1/segment?format=json&include_mask=true", content=encode(rgb))
    assert r.status_code == 200
    body = r.json()
    mask = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(body["mask_png"]))))
    png = np.asarray(Image.open(io.BytesIO(client.post("/v1/segment", content=encode(rgb)).content)))
    assert np.array_equal(mask, png)
    assert (body["width"], body["height"]) == (50, 40)
    assert [c["name"] for c in body["classes"]] == CLASSES
    counts = np.bincount(mask.reshape(-1), minlength=3)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert body["present"] == [CLASSES[i] for i in np.flatnonzero(counts)]
    assert [c["color"] for c in body["classes"]] == PALETTE.tolist()
    assert body["inference_ms"] > 0
    assert client.post("/v1/segment?format=json", content=encode(rgb)).json()["mask_png"] is None


def test_upload_over_byte_limit_is_413(client):
    limit = int(MAX_UPLOAD_MB * 2**20)
    body = os.urandom(limit + 1)
    assert_error(client.post("/v1/segment", content=body), 413, str(limit))

    def chunks():  # no Content-Length: the server counts while reading
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    assert_error(client.post("/v1/segment", content=chunks()), 413, str(limit))
    files = {"image": ("big.png", body, "image/png")}
    assert_error(client.post("/v1/segment", files=files), 413, str(limit))


def test_image_over_pixel_limit_is_413_without_decoding(client, app, monkeypatch):
    decoded = []
    service = app.state.service
    original = service.segment
    monkeypatch.setattr(service, "segment", lambda *a: decoded.append(1) or original(*a))
    for data in (png_with_size(1000, 1000), jpeg_with_size(30000, 30000), png_with_size(2**31 - 1, 2**31 - 1)):
        body = assert_error(client.post("/v1/segment", content=data), 413)
        assert str(MAX_PIXELS) in body["detail"] or "decompression bomb" in body["detail"].lower()
    # a real 1000x1000 PNG (compresses to a few KB: a small upload that would decode to 3 MB)
    bomb = encode(np.zeros((1000, 1000, 3), np.uint8))
    assert len(bomb) < 20_000
    assert_error(client.post("/v1/segment", content=bomb), 413, "1000x1000", str(MAX_PIXELS))
    assert decoded == []
    assert client.post("/v1/segment", content=encode(image(20, 30))).status_code == 200
    assert decoded == [1]


@pytest.mark.parametrize(
    "body",
    [b"hello, this is text", b"%PDF-1.4\n%...", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", b"\x00" * 64],
    ids=["text", "pdf", "eps", "zeros"],
)
def test_not_an_image_is_415(client, body):
    assert_error(client.post("/v1/segment", content=body), 415, "not an image")


def test_corrupt_images_are_400(client):
    png, jpeg = encode(image(30, 40)), encode(image(30, 40), "JPEG")
    assert_error(client.post("/v1/segment", content=png[: len(png) // 2]), 400, "truncated")
    assert_error(client.post("/v1/segment", content=jpeg[: len(jpeg) // 2]), 400, "runcated")
    broken = bytearray(png)
    broken[60:80] = b"\xff" * 20  # inside IDAT
    assert_error(client.post("/v1/segment", content=bytes(broken)), 400, "PNG")
    assert_error(client.post("/v1/segment", content=b""), 400, "no image")
    assert_error(client.post("/v1/segment", files={"other": (None, "text")}), 400, "'image'")
    assert_error(client.post("/v1/segment?format=xml", content=png), 422, "format")
    assert_error(client.post("/v1/segment?alpha=2", content=png), 422, "alpha")
    assert_error(client.get("/v1/segment"), 405)
    assert_error(client.get("/nowhere"), 404)


def test_queue_full_is_503_with_retry_after(app):
    """workers=1, max_queue=2: a fourth request while three are admitted gets 503."""
    service = app.state.service
    release = threading.Event()
    original = service.segment

    def slow(*args):
        release.wait(30)
        return original(*args)

    async def run() -> list:
        service.segment = slow
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                data = encode(image(20, 20))
                admitted = [asyncio.create_task(c.post("/v1/segment", content=data)) for _ in range(3)]
                while service.active < 3:
                    await asyncio.sleep(0.01)
                refused = await c.post("/v1/segment", content=data)
                release.set()
                return [refused, *await asyncio.gather(*admitted)]
        finally:
            del service.segment  # back to the class's method
            release.set()

    refused, *done = asyncio.run(run())
    assert_error(refused, 503, "retry after")
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200, 200, 200]
    assert service.active == 0


def test_unexpected_failure_is_500_json_and_server_keeps_serving(client, app, monkeypatch):
    def boom(*args):
        raise RuntimeError("secret internal state")

    monkeypatch.setattr(app.state.service, "segment", boom)
    r = assert_error(client.post("/v1/segment", content=encode(image(10, 10))), 500)
    assert "secret" not in r["detail"]
    monkeypatch.undo()
    assert client.post("/v1/segment", content=encode(image(10, 10))).status_code == 200


def test_bad_settings_are_config_errors(ckpt_file):
    from fcnseg.errors import ConfigError

    for kwargs in ({"workers": 0}, {"max_queue": -1}, {"max_upload_mb": 0}, {"max_image_pixels": 10**12},
                   {"tta": "flip,scales=x"}, {"backend": "tensorrt"}, {"onnx_path": ckpt_file}):
        with pytest.raises(ConfigError):
            create_app(ckpt_file, device="cpu", warmup_size=None, **kwargs)


def test_cli_missing_extra_is_one_line(monkeypatch, capsys, ckpt_file):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--checkpoint", str(ckpt_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[serve]"' in err


# ---------------------------------------------------------------------------- fuzzing


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, on bit-flipped TIFFs
def test_fuzzed_uploads_never_5xx(client):
    """Random bytes, truncated and bit-flipped PNG/JPEG/BMP/TIFF, huge declared sizes: every
    answer is 200 or a JSON 4xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bases = [encode(image(12, 17, seed=1)), encode(image(12, 17, seed=2), "JPEG"),
             encode(image(9, 11, seed=3), "BMP"), encode(image(9, 11, seed=4), "TIFF"),
             encode(image(9, 11, seed=4), "GIF"), encode(image(9, 11, seed=4), "WEBP")]
    mutated = st.builds(
        lambda base, cut, flips: bytes(
            b ^ flips.get(i, 0) for i, b in enumerate(bases[base][: max(1, int(len(bases[base]) * cut))])
        ),
        st.integers(0, len(bases) - 1),
        st.floats(0.0, 1.0),
        st.dictionaries(st.integers(0, 400), st.integers(1, 255), max_size=4),
    )
    sized = st.one_of(
        st.builds(png_with_size, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
        st.builds(jpeg_with_size, st.integers(0, 65535), st.integers(0, 65535)),
    )
    statuses = set()

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(st.binary(max_size=300), mutated, sized), multipart=st.booleans(),
           fmt=st.sampled_from(["png", "json", "overlay"]))
    def check(body, multipart, fmt):
        kwargs = {"files": {"image": ("x", body, "application/octet-stream")}} if multipart else {"content": body}
        r = client.post(f"/v1/segment?format={fmt}", **kwargs)
        statuses.add(r.status_code)
        assert r.status_code < 500, r.text
        if r.status_code != 200:
            assert set(r.json()) == {"error", "detail"}

    check()
    assert {200, 400, 413, 415} <= statuses, statuses


def test_openapi_contract_with_schemathesis(app):
    """Requests generated from the published spec (valid and invalid by the schema), 15 per
    operation and mode: never a 5xx, and every answer's status, content type and JSON body are
    the ones the spec declares. (A schema-valid body need not be an image, so a 4xx for one is
    right: that check is left out.)"""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    calls = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # the GETs take nothing that could be invalid
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                calls.append(case.call_and_validate(excluded_checks=[positive_data_acceptance]).status_code)

            check()
    assert calls and max(calls) < 500


# ---------------------------------------------------------------------------- a server that holds


@pytest.fixture(scope="module")
def locked(ckpt_file):
    """An app with a token, the default Host allow-list (loopback names) and a small
    inference limit: the checkpoint's flip TTA makes 2 views, so 1000 pixel-views = 500 pixels."""
    return create_app(ckpt_file, device="cpu", warmup_size=None, token="s3cret", max_inference_pixels=1000, read_timeout=0.5)


def _client(app, host: str = "127.0.0.1:8000"):
    return TestClient(app, base_url=f"http://{host}", raise_server_exceptions=False)


def test_token_guards_the_api_but_not_the_page_or_probes(locked):
    with _client(locked) as c:
        for path in ("/v1/model", "/metrics"):
            r = c.get(path)
            assert_error(r, 401, "Authorization: Bearer")
            assert r.headers["www-authenticate"] == "Bearer"
            assert_error(c.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert_error(c.post("/v1/segment", content=encode(image(10, 10)), headers={"Content-Type": "image/png"}), 401)
        for path in ("/", "/healthz", "/readyz", "/static/app.js"):
            assert c.get(path).status_code == 200, path


def test_host_allow_list_stops_dns_rebinding(locked):
    """A page of evil.example whose name was rebound to 127.0.0.1 sends Host: evil.example."""
    auth = {"Authorization": "Bearer s3cret"}
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        with _client(locked, host) as c:
            assert c.get("/v1/model", headers=auth).status_code == 200, host
    with _client(locked, "evil.example:8000") as c:
        assert_error(c.get("/v1/model", headers=auth), 400, "'evil.example:8000'", "--allowed-host")
        assert_error(c.get("/"), 400, "--allowed-host")
        assert c.get("/healthz").status_code == 200  # probes address the pod by IP


@pytest.mark.parametrize("ctype, status", [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("application/json", 415),
    ("image/png", 200), ("application/octet-stream", 200), (None, 200),
])  # fmt: skip
def test_only_image_multipart_or_octet_stream_bodies(client, ctype, status):
    """The three types an HTML form sends cross-site without a preflight are 415 (text/plain
    and urlencoded; multipart is the API's); no Content-Type: the bytes are sniffed."""
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/v1/segment", content=encode(image(12, 12)), headers=headers)
    if status == 415:
        assert_error(r, 415, f"Content-Type {ctype!r}", "multipart/form-data")
    else:
        assert r.status_code == 200, r.text


def test_every_answer_carries_a_request_id_and_every_log_line_names_it(client, app, monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="fcnseg.serve.app"):
        answers = [client.get("/healthz"), client.get("/nowhere"), client.post("/v1/segment", content=b"x", headers={"Content-Type": "text/plain"}),
                   client.get("/v1/model", headers={"X-Request-ID": "my-trace.42"}), client.get("/v1/model", headers={"X-Request-ID": "bad id; x"})]  # fmt: skip
        monkeypatch.setattr(app.state.service, "segment", lambda *a: 1 / 0)
        answers.append(client.post("/v1/segment", content=encode(image(10, 10))))
    ids = [r.headers.get("x-request-id") for r in answers]
    assert [r.status_code for r in answers] == [200, 404, 415, 200, 200, 500]
    assert all(ids) and len(set(ids)) == 6 and ids[3] == "my-trace.42" and " " not in ids[4]
    lines = [r.getMessage() for r in caplog.records]
    for rid, r in zip(ids, answers, strict=True):
        assert any(line.startswith(f"request {rid}: ") and f" {r.status_code} " in line for line in lines), (rid, lines)
    assert any(line.startswith(f"request {ids[5]}: POST /v1/segment failed") for line in lines)


def test_metrics_count_requests_errors_latency_and_queue(locked):
    from prometheus_client.parser import text_string_to_metric_families

    auth = {"Authorization": "Bearer s3cret"}
    with _client(locked) as c:
        before = c.get("/metrics", headers=auth).text
        assert c.post("/v1/segment", content=encode(image(10, 10)), headers=auth).status_code == 200
        assert c.post("/v1/segment", content=b"not an image", headers=auth).status_code == 415
        text = c.get("/metrics", headers=auth).text
    assert "fcnseg_requests_total" in before

    def read(text: str) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    was, samples = read(before), read(text)

    def grew(name: str, *labels) -> float:  # the module's app served other tests before
        return samples[(name, tuple(labels))] - was.get((name, tuple(labels)), 0)

    assert grew("fcnseg_requests_total", ("route", "/v1/segment"), ("status", "200")) == 1
    assert grew("fcnseg_errors_total", ("route", "/v1/segment"), ("status", "415")) == 1
    assert grew("fcnseg_request_seconds_count", ("route", "/v1/segment")) == 2
    assert grew("fcnseg_inference_seconds_count") == 1
    assert samples[("fcnseg_queue_requests", ())] == 0 and samples[("fcnseg_queue_limit", ())] == 9
    assert ("fcnseg_upload_bytes_held", ()) in samples


def test_inference_cost_limit_is_413_naming_it(locked):
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "image/png"}
    with _client(locked) as c:
        assert c.post("/v1/segment", content=encode(image(20, 25)), headers=auth).status_code == 200  # 500 px x 2 views
        r = c.post("/v1/segment", content=encode(image(20, 30)), headers=auth)
    assert_error(r, 413, "20x30... " if False else "30x20 = 600 pixels x 2 TTA views = 1200 pixel-views", "limit of 1000", "--max-inference-pixels")


def _asgi_post(app, chunks, *, headers=(), gone=None):
    """POST /v1/segment straight through ASGI: ``chunks`` is an async generator of body
    parts; after the body, receive() waits for ``gone`` (an asyncio.Event) and then reports
    the client's disconnect. Returns (status, body, whether the body was read at all)."""
    state = {"read": False, "status": None, "body": b"", "ended": False}
    parts = chunks.__aiter__()

    async def receive():
        try:
            chunk = await parts.__anext__()
            state["read"] = True
            return {"type": "http.request", "body": chunk, "more_body": True}
        except StopAsyncIteration:
            if not state["ended"]:
                state["ended"] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if gone is not None:
                await gone.wait()
            else:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            state["status"] = message["status"]
        elif message["type"] == "http.response.body":
            state["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/segment", "raw_path": b"/v1/segment", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    return scope, receive, send, state


def test_queue_full_is_503_before_the_body_is_read(app):
    service = app.state.service

    async def body():
        yield encode(image(10, 10))

    async def run():
        service.active = service.workers + service.max_queue
        try:
            scope, receive, send, state = _asgi_post(app, body(), headers=[(b"content-length", b"200")])
            await app(scope, receive, send)
            return state
        finally:
            service.active = 0

    state = asyncio.run(run())
    assert state["status"] == 503 and not state["read"]  # the old app read the whole body first


def test_bodies_held_are_capped_in_bytes_from_content_length(app):
    service = app.state.service

    async def body():
        yield b"x" * 10

    async def run():
        service.buffered = service.max_buffered - 100
        try:
            scope, receive, send, state = _asgi_post(app, body(), headers=[(b"content-length", b"200")])
            await app(scope, receive, send)
            return state
        finally:
            service.buffered = 0

    state = asyncio.run(run())
    assert state["status"] == 503 and b"bytes of uploads" in state["body"] and not state["read"]
    assert service.max_buffered == int(MAX_UPLOAD_MB * 2**20) * (1 + 2 + 2)


def test_a_body_that_trickles_past_the_read_timeout_is_408(locked):
    async def trickle():
        for _ in range(100):
            yield b"\x89"
            await asyncio.sleep(0.05)

    async def run():
        scope, receive, send, state = _asgi_post(locked, trickle(), headers=[(b"host", b"127.0.0.1"), (b"authorization", b"Bearer s3cret")])
        t = time.monotonic()
        await locked(scope, receive, send)
        return state, time.monotonic() - t

    state, seconds = asyncio.run(run())
    assert state["status"] == 408 and b"--read-timeout" in state["body"]
    assert 0.4 < seconds < 2.0 and locked.state.service.buffered == 0


def test_a_request_whose_client_left_while_queued_never_runs(app):
    """workers=1: request A holds the worker; B waits for it, then its client disconnects.
    B must be dropped without running (the old app ran it and answered nobody)."""
    service = app.state.service
    release, ran = threading.Event(), []
    original = service.segment

    def slow(*args):
        ran.append(args[0].size)
        release.wait(30)
        return original(*args)

    async def body(h, w):
        yield encode(image(h, w))

    async def run():
        service.segment = slow
        try:
            a = _asgi_post(app, body(10, 10))
            gone = asyncio.Event()
            b = _asgi_post(app, body(11, 13), gone=gone)
            task_a = asyncio.create_task(app(*a[:3]))
            while not ran:
                await asyncio.sleep(0.01)
            task_b = asyncio.create_task(app(*b[:3]))
            while service.active < 2:
                await asyncio.sleep(0.01)
            gone.set()  # B's client disconnects while B waits for the worker
            await asyncio.wait_for(task_b, 10)
            release.set()
            await asyncio.wait_for(task_a, 30)
            return a[3], b[3]
        finally:
            del service.segment
            release.set()

    a, b = asyncio.run(run())
    assert a["status"] == 200 and b["status"] == 499
    assert ran == [(10, 10)] and service.active == 0 and service.buffered == 0


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_headers_that_trickle_are_cut_off_and_sigterm_drains(ckpt_file):
    """uvicorn as `fcnseg serve` runs it (fcnseg.serve.server), header deadline 0.5 s: a
    connection that sends half its headers is closed after it; a request in progress when
    SIGTERM comes finishes (200), then the server stops."""
    import signal

    import uvicorn

    from fcnseg.serve import server as srv

    app = create_app(ckpt_file, device="cpu", warmup_size=None)
    port = _free_tcp_port()
    sock = srv.listen("127.0.0.1", port)
    protocol = type("P", (srv._HeaderDeadline,), {"header_timeout": 0.5})
    config = uvicorn.Config(app, http=protocol, limit_concurrency=16, timeout_graceful_shutdown=10, log_level="warning", access_log=False)
    server = srv._DrainingServer(config, app.state.service)
    server.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slow.settimeout(5)
        t = time.monotonic()
        assert slow.recv(100) == b""  # closed by the server
        assert 0.4 < time.monotonic() - t < 3
        # a request in progress at SIGTERM: its body is half sent
        png = encode(image(16, 16))
        busy = socket.create_connection(("127.0.0.1", port))
        busy.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     + f"Content-Length: {len(png)}\r\n\r\n".encode() + png[:10])  # fmt: skip
        time.sleep(0.3)
        server.handle_exit(signal.SIGTERM, None)
        assert app.state.service.draining
        time.sleep(0.3)
        busy.sendall(png[10:])
        busy.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += busy.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        thread.join(15)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("argv, words", [
    (["--host", "0.0.0.0"], ["--host 0.0.0.0 lets other machines reach the API", "FCNSEG_TOKEN", "--no-auth"]),
    (["--port", "{busy}"], ["cannot listen on 127.0.0.1:{busy}", "Address already in use", "another --port"]),
])  # fmt: skip
def test_serve_start_up_refusals_are_one_line(ckpt_file, capsys, monkeypatch, argv, words):
    monkeypatch.delenv("FCNSEG_TOKEN", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        rc = main(["serve", "--checkpoint", str(ckpt_file), "--device", "cpu", *[a.replace("{busy}", busy) for a in argv]])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w.replace("{busy}", busy) in lines[0], lines[0]


# ---------------------------------------------------------------------------- the browser

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); else the first on PATH


def _chromium() -> str | None:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    import shutil

    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, request):
    """`fcnseg serve` in a subprocess on a free port of 127.0.0.1; yields its base URL.
    Parametrised indirectly with a token, the server runs with FCNSEG_TOKEN set to it."""
    ckpt = write_checkpoint(tmp_path / "best.pt")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("FCNSEG_TOKEN", None)
    if getattr(request, "param", None):
        env["FCNSEG_TOKEN"] = request.param
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        # torch: the default `--backend auto` would export and time every engine first (~20 s on
        # 2 cores of an AMD EPYC [AVX2 only: no AVX-512, no native bf16]; its choice is tested in test_export.py / test_engine_check.py)
        [sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(ckpt), "--port", str(port), "--device", "cpu", "--backend", "torch"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_page_in_headless_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    chromium = _chromium()
    if chromium is None:
        pytest.skip(f"no Chromium at {CHROMIUM} nor on PATH (Debian: apt-get install chromium)")
    if PET_IMAGE.is_file():
        upload = PET_IMAGE
    else:  # no real data here: a generated photo-like image
        upload = tmp_path / "generated.jpg"
        Image.fromarray(image(300, 400, seed=7)).save(upload, quality=92)
    expected = np.asarray(Image.open(io.BytesIO(httpx.post(server + "/v1/segment", content=upload.read_bytes(), timeout=120).content)))
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1200, "height": 860},
        )
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            # a locator wait (Playwright's injected script), not wait_for_function: a string
            # predicate is eval'ed in the page, which the page's Content-Security-Policy forbids
            page.locator("#model-line", has_text="fcn8s").wait_for(timeout=60_000)
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            legend = page.locator("#legend tbody tr.present td:nth-child(2)").all_inner_texts()
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("FCNSEG_SCREENSHOT"):  # a copy to look at
                page.screenshot(path=os.environ["FCNSEG_SCREENSHOT"], full_page=True)
            # the canvas at full mask opacity shows the palette colour of each pixel's class
            page.locator("#opacity").fill("100")
            h, w = expected.shape
            pixels = page.evaluate(
                f"Array.from(document.getElementById('canvas').getContext('2d').getImageData(0, 0, {w}, {h}).data)"
            )
            download = page.get_attribute("#download", "download")
        finally:
            context.close()
    assert errors == []
    assert shot.stat().st_size > 10_000
    names = [name.strip() for name in legend]
    present = [CLASSES[i] for i in np.unique(expected)]
    assert sorted(names) == sorted(present), legend
    canvas = np.asarray(pixels, np.int16).reshape(h, w, 4)[..., :3]
    assert np.abs(canvas - PALETTE[expected].astype(np.int16)).max() <= 2
    assert download == f"{upload.stem}_mask.png"


@pytest.mark.parametrize("server", ["t0ken-42"], indirect=True)
def test_page_passes_the_token_from_its_address(server, tmp_path):
    """A server with FCNSEG_TOKEN: the API refuses a request without it, and the page opened
    at /#token=... segments (it sends the token) and drops the token from the address bar."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    chromium = _chromium()
    if chromium is None:
        pytest.skip(f"no Chromium at {CHROMIUM} nor on PATH (Debian: apt-get install chromium)")
    assert httpx.get(server + "/v1/model", timeout=30).status_code == 401
    upload = tmp_path / "generated.png"
    Image.fromarray(image(60, 80, seed=8)).save(upload)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/#token=t0ken-42")
            page.locator("#model-line", has_text="fcn8s").wait_for(timeout=60_000)
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            legend = page.locator("#legend tbody tr.present td:nth-child(2)").all_inner_texts()
            url = page.url
        finally:
            context.close()
    assert errors == [] and legend and "t0ken" not in url
