"""The HTTP app of ``fcnseg serve``: ``create_app(checkpoint, ...)`` returns an ASGI app.

Endpoints (the app publishes its OpenAPI spec at ``/openapi.json``, browsable at ``/docs``):

- ``POST /v1/segment``: an image (raw body, or multipart with a file field ``image``) →
  the palette PNG of class indices at the image's size; ``?format=json`` → sizes, per-class
  pixel counts and fractions, classes present, inference milliseconds (``include_mask=true``
  adds the PNG, base64); ``?format=overlay`` → the overlay JPEG with its legend, as
  ``fcnseg predict`` writes it.
- ``GET /v1/model``: model, classes, palette, preprocessing, checkpoint SHA-256, the
  test-time settings and what one image costs with them (timed at start-up), the limits.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded).
- ``GET /``: a web page (``fcnseg/serve/static``) to try the model in a browser.

Inference is ``fcnseg.inference.predict.Predictor``, the code ``fcnseg predict`` runs, so a
served mask equals ``predict``'s for the same file and settings. Limits: bodies over
``max_upload_mb`` → 413 (read no further); images whose header declares more than
``max_image_pixels`` → 413 before any pixel is decoded; not an image → 415; an image that
fails to decode → 400; at most ``workers`` images decode and run at once, ``max_queue`` more
wait, beyond that → 503 with ``Retry-After`` (checked before the body is read); a body
that does not arrive within ``read_timeout`` seconds → 408; bodies held at once are capped
in bytes (→ 503); an image whose pixels x TTA views exceed ``max_inference_pixels`` → 413;
a request whose client went away while it waited is dropped before inference. Every error
is JSON ``{"error", "detail"}``; an unexpected exception is logged and answered 500 without
its traceback.

Before any route (``Guard``, an ASGI middleware): the Host header must be one of
``allowed_hosts`` (loopback names by default: a DNS-rebinding page cannot reach the API),
except for /healthz and /readyz; with a ``token``, ``/v1/*`` and ``/metrics`` need
``Authorization: Bearer TOKEN``; a POST body must be ``image/*``, ``multipart/form-data`` or
``application/octet-stream`` (415 otherwise: an HTML form cannot send those cross-site).
Every answer carries ``X-Request-ID`` (the client's, if it sent a plain one), and every
request is logged as one line with it. ``GET /metrics``: Prometheus counters of requests,
errors and latency by route, the queue and the bytes of bodies held.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import hmac
import io
import logging
import math
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg import __version__
from fcnseg.data.base import RASTER_FORMATS, image_to_rgb
from fcnseg.errors import ConfigError

try:
    import anyio
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_TYPE
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel, Field
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
    raise ConfigError(
        f"fcnseg serve needs the optional serving packages ({e.name} is missing); "
        'install them with: pip install -e ".[serve]"'
    ) from None

from fcnseg.inference.predict import Predictor, overlay_with_legend, palette_png

log = logging.getLogger(__name__)

# PIL plugins an upload may be decoded with: the formats `fcnseg predict` reads. Others
# (EPS runs Ghostscript, PSD, ICO, GIF, ...) are refused as 415 before any plugin looks at them.
UPLOAD_FORMATS = RASTER_FORMATS
DEFAULT_MAX_IMAGE_PIXELS = 16_777_216  # 4096 x 4096: a 12 MP phone photo passes
DEFAULT_MAX_UPLOAD_MB = 20.0
WARMUP_SIZE = (384, 512)  # (H, W) of the start-up inference that prices one image
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body
STATIC = "static"
# pixels x TTA views one request may cost: 4 MP at one view (2048x2048), 2048x1024 with
# flip. Inference memory grows with it: measured (fp32, CPU, eager, one 1024x1024 image,
# 21 classes) +1.0 GiB per megapixel-view for FCN-8s/VGG16 (the widest: conv1's padding of
# 100) and +0.36 GiB for FCN-8s/ResNet-18, so at this limit ~4 GiB and ~1.5 GiB.
DEFAULT_MAX_INFERENCE_PIXELS = 4_194_304
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a request's whole body to arrive
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/healthz", "/readyz")  # no Host check: probes address the pod by its IP
BODY_TYPES = ("image/", "multipart/form-data", "application/octet-stream")
ROUTES = ("/v1/segment", "/v1/model", "/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/docs")
REQUEST_ID = contextvars.ContextVar("fcnseg_request_id", default="-")
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ServeError(Exception):
    """An answer other than 200: ``status``, a short ``error`` code and a ``detail`` sentence."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


# ---------------------------------------------------------------------------- decoding


def open_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Reads only the header of an uploaded image and checks its size: a lazy PIL image.
    ServeError 400 (empty), 415 (not an image of ``UPLOAD_FORMATS``), 413 (over
    ``max_pixels``: nothing decoded), 400 (a header PIL rejects)."""
    if not data:
        raise ServeError(400, "empty_body", "the request carries no image; send the image bytes as the body or as the multipart field 'image'")
    try:
        with warnings.catch_warnings():  # the size is checked below (open_upload runs in the event loop thread only)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except UnidentifiedImageError:
        raise ServeError(
            415, "unsupported_media_type",
            f"the body is not an image fcnseg reads ({', '.join(UPLOAD_FORMATS)})",
        ) from None
    except Image.DecompressionBombError as e:
        raise ServeError(413, "image_too_large", f"{e}; the limit is {max_pixels} pixels") from None
    except Exception as e:  # a plugin accepted the magic bytes, then the header broke
        raise ServeError(400, "corrupt_image", f"cannot read the image header: {e or type(e).__name__}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ServeError(400, "corrupt_image", f"the image header declares {w}x{h} pixels")
    if w * h > max_pixels:
        raise ServeError(
            413, "image_too_large",
            f"the image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels "
            "(fcnseg serve --max-image-pixels); send a smaller image",
        )
    return im


def decode_upload(im: Image.Image) -> np.ndarray:
    """Decodes an image from ``open_upload`` as ``read_image`` decodes files for ``fcnseg
    predict`` (fully, EXIF orientation applied, converted to RGB): uint8 (H, W, 3).
    ServeError 400 naming the problem if the pixel data are broken."""
    try:
        im.load()  # (no warnings filter here: worker threads must not change the process's filters)
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # a broken EXIF block must not hide usable pixels (as open_image)
            pass
        return np.ascontiguousarray(image_to_rgb(im))
    except (MemoryError, Image.DecompressionBombError) as e:
        raise ServeError(413, "image_too_large", f"the image is too large to decode: {e}") from None
    except Exception as e:
        text = str(e) or type(e).__name__
        raise ServeError(400, "corrupt_image", f"cannot decode the {im.format} image: {text}") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def class_areas(pred: np.ndarray, classes: Sequence[str], palette: np.ndarray) -> list[dict]:
    """Per class of ``classes``: index, name, colour, pixel count and fraction of ``pred``."""
    counts = np.bincount(pred.reshape(-1), minlength=len(classes))[: len(classes)]
    total = max(1, int(pred.size))
    return [
        {"index": i, "name": name, "color": [int(v) for v in palette[i]],
         "pixels": int(counts[i]), "fraction": int(counts[i]) / total}
        for i, name in enumerate(classes)
    ]


# ---------------------------------------------------------------------------- schemas


class ErrorBody(BaseModel):
    error: str = Field(description="short code, e.g. image_too_large, unsupported_media_type, corrupt_image, busy")
    detail: str = Field(description="what was wrong and how to fix it")


class ClassArea(BaseModel):
    index: int
    name: str
    color: list[int] = Field(description="RGB 0-255, the class's palette colour")
    pixels: int
    fraction: float = Field(description="pixels / (width * height)")


class Segmentation(BaseModel):
    width: int
    height: int
    classes: list[ClassArea] = Field(description="every class of the model, in index order")
    present: list[str] = Field(description="names of the classes with at least one pixel")
    inference_ms: float = Field(description="model time for this image (decoding and encoding excluded)")
    mask_png: str | None = Field(None, description="with include_mask=true: the mask PNG, base64")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty body, a corrupt image, a bad multipart body, a Host not served"},
    401: {"model": ErrorBody, "description": "the server has a token and the request did not carry it (Authorization: Bearer)"},
    408: {"model": ErrorBody, "description": "the body did not arrive within the read timeout"},
    413: {"model": ErrorBody, "description": "the body is over the byte limit, the image over the pixel limit, or pixels x TTA views over the inference limit"},
    415: {"model": ErrorBody, "description": "the body is not an image fcnseg reads, or its Content-Type is not image/*, multipart/form-data or application/octet-stream"},
    422: {"model": ErrorBody, "description": "a bad query parameter"},
    503: {"model": ErrorBody, "description": "the queue is full (see Retry-After), or the model is not loaded"},
}


# ---------------------------------------------------------------------------- the service


class Service:
    """The loaded model, its settings and figures, the limits and the admission counter.
    ``active`` (requests admitted: decoding, inferring or waiting for a worker) is only
    touched from the event loop thread."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        checkpoint_name: str | None,
        checkpoint_sha256: str | None,
        max_upload_bytes: int,
        max_image_pixels: int,
        workers: int,
        max_queue: int,
        max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        token: str | None = None,
        allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    ) -> None:
        self.predictor = predictor
        self.max_inference_pixels = max_inference_pixels
        self.read_timeout = read_timeout
        self.token = token or None
        self.allowed_hosts = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower().strip("[]") for h in allowed_hosts}
        # bytes of request bodies held at once (read, waiting or in inference): the body of
        # every admitted request plus a few arriving; beyond it new bodies get 503
        self.max_buffered = max_upload_bytes * (workers + max_queue + 2)
        self.buffered = 0
        self.draining = False
        self.metrics = Metrics(self)
        self.checkpoint_name = checkpoint_name
        self.checkpoint_sha256 = checkpoint_sha256
        # torch modules run concurrently from threads; the other engines' runners (an OpenVINO
        # infer request, auto's first-call probing, torch.compile) are not known to be thread-safe
        self._model_lock = contextlib.nullcontext() if predictor.backend.startswith("torch") else threading.Lock()
        self.max_upload_bytes = max_upload_bytes
        self.max_image_pixels = max_image_pixels
        self.workers = workers
        self.max_queue = max_queue
        self.limiter = anyio.CapacityLimiter(workers)
        self.active = 0
        self.warmup_ms: float | None = None
        self.warmup_size: tuple[int, int] | None = None
        self.mean_ms: float | None = None  # running mean of request inference times
        self._lock = threading.Lock()
        self.ready = False

    def warm_up(self, size: tuple[int, int]) -> float:
        """Two inferences on a random (H, W) = ``size`` image: the first pays the one-time
        costs (kernel selection, allocations, ``auto``'s probing), the second is timed: its
        milliseconds."""
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)
        with self._model_lock:
            self.predictor(image)
        t = time.perf_counter()
        with self._model_lock:
            self.predictor(image)
        self.warmup_ms = (time.perf_counter() - t) * 1000.0
        self.warmup_size = tuple(size)
        return self.warmup_ms

    def settings_line(self) -> str:
        cost = ""
        if self.warmup_ms is not None:
            h, w = self.warmup_size
            cost = f"; one {h}x{w} image takes {self.warmup_ms:.0f} ms (warm-up)"
        return self.predictor.describe() + cost

    def record(self, ms: float) -> None:
        with self._lock:
            self.mean_ms = ms if self.mean_ms is None else 0.9 * self.mean_ms + 0.1 * ms

    def busy(self) -> ServeError | None:
        """503 when the workers and the queue are full (checked before the body is read)."""
        if self.active < self.workers + self.max_queue:
            return None
        wait = self.retry_after()
        return ServeError(
            503, "busy",
            f"{self.active} requests are in inference or waiting (at most {self.workers} + "
            f"{self.max_queue}); retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )

    def check_cost(self, im: Image.Image) -> None:
        """413 when the image's pixels x TTA views exceed ``max_inference_pixels``."""
        w, h = im.size
        views = self.predictor.views
        if w * h * views > self.max_inference_pixels:
            raise ServeError(
                413, "inference_too_large",
                f"the image is {w}x{h} = {w * h} pixels x {views} TTA views = {w * h * views} pixel-views, "
                f"over the inference limit of {self.max_inference_pixels} (fcnseg serve --max-inference-pixels); "
                "send a smaller image",
            )

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times the time per image."""
        per = (self.mean_ms or self.warmup_ms or 1000.0) / 1000.0
        return max(1, math.ceil(per * (self.active + 1) / self.workers))

    def model_info(self) -> dict:
        p = self.predictor
        cfg = dict(p.checkpoint.get("model_config") or {})
        return {
            "model": cfg.get("name"),
            "backbone": cfg.get("backbone"),
            "model_config": cfg,
            "num_classes": len(p.classes),
            "classes": list(p.classes),
            "palette": [[int(v) for v in c] for c in p.palette[: len(p.classes)]],
            "preprocessing": {
                "color": "RGB", "scale": "0-255 to 0-1", "mean": list(p.mean), "std": list(p.std),
                "resize": "none: the image is segmented at its own size",
            },
            "checkpoint": {"file": self.checkpoint_name, "sha256": self.checkpoint_sha256},
            "inference": {
                "backend": p.backend,
                "device": str(p.device),
                "precision": p.precision_name,
                "engine": p.engine,
                "tta": str(p.tta) if p.tta is not None else None,
                "tta_views": p.views,
                "crf": str(p.crf) if p.crf is not None else None,
                "sliding_window": list(p.window) if p.window else None,
                "warmup_ms": self.warmup_ms,
                "warmup_size": list(self.warmup_size) if self.warmup_size else None,
                "mean_ms": self.mean_ms,
            },
            "limits": {
                "max_upload_bytes": self.max_upload_bytes,
                "max_image_pixels": self.max_image_pixels,
                "max_inference_pixels": self.max_inference_pixels,
                "read_timeout_s": self.read_timeout,
                "workers": self.workers,
                "max_queue": self.max_queue,
            },
            "auth": "bearer" if self.token else None,
            "fcnseg_version": __version__,
        }

    def segment(self, im: Image.Image, fmt: str, alpha: float, include_mask: bool) -> tuple[bytes | dict, float]:
        """Runs in a worker thread: decode, infer, encode. Returns (body, inference ms)."""
        p = self.predictor
        image = decode_upload(im)
        with self._model_lock:
            t = time.perf_counter()
            pred = p(image)
            ms = (time.perf_counter() - t) * 1000.0
        self.record(ms)
        self.metrics.inference.observe(ms / 1000.0)
        if fmt == "overlay":
            buf = io.BytesIO()
            Image.fromarray(overlay_with_legend(image, pred, p.classes, p.palette, alpha)).save(
                buf, format="JPEG", quality=92, subsampling=0
            )
            return buf.getvalue(), ms
        png = io.BytesIO()
        palette_png(pred, p.palette).save(png, format="PNG")
        if fmt == "png":
            return png.getvalue(), ms
        areas = class_areas(pred, p.classes, p.palette)
        body = {
            "width": int(pred.shape[1]),
            "height": int(pred.shape[0]),
            "classes": areas,
            "present": [a["name"] for a in areas if a["pixels"]],
            "inference_ms": round(ms, 3),
            "mask_png": base64.b64encode(png.getvalue()).decode("ascii") if include_mask else None,
        }
        return body, ms


def create_app(
    checkpoint: str | os.PathLike | dict,
    *,
    tta: str | None = "auto",
    crf: str | None = "auto",
    sliding_window: int | str | Sequence[int] | None = None,
    device: str | None = None,
    precision: str = "auto",
    backend: str = "auto",
    onnx_path: str | os.PathLike | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    workers: int = 1,
    max_queue: int = 8,
    warmup_size: tuple[int, int] | None = WARMUP_SIZE,
    max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    **engine_check,
) -> FastAPI:
    """Loads ``checkpoint`` (a path or a loaded dict) and returns the FastAPI app serving it.

    ``tta``/``crf``: as ``fcnseg.predict`` ("auto": the checkpoint's saved default; None or
    "none": off; else a spec). ``backend``/``onnx_path``: the inference engine, as
    ``fcnseg.inference.loader.load_engine`` (torch, compile, onnxruntime, openvino, auto);
    ``engine_check``: ``calib_data``, ``calib_root``, ``calib_split``, ``tolerance`` of auto's
    task check, as ``Predictor``.
    ``workers``: images in inference at once; ``max_queue``: more requests admitted to wait;
    ``warmup_size``: (H, W) of the timed start-up inference (None: skip it).
    ``max_inference_pixels``: pixels x TTA views one request may cost (413 above);
    ``read_timeout``: seconds a body may take to arrive (408 after); ``token``: the bearer
    token ``/v1/*`` and ``/metrics`` require (None: none); ``allowed_hosts``: the Host header
    values served (``"*"`` or None: any). Bad settings raise ConfigError/WeightsError before
    anything is served."""
    from fcnseg.checkpoint import load_checkpoint

    for name, value, low in (("workers", workers, 1), ("max_queue", max_queue, 0), ("max_image_pixels", max_image_pixels, 1), ("max_inference_pixels", max_inference_pixels, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")
    if Image.MAX_IMAGE_PIXELS and max_image_pixels > Image.MAX_IMAGE_PIXELS:
        raise ConfigError(
            f"max_image_pixels={max_image_pixels}: over Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); use a smaller limit"
        )
    if not (max_upload_mb > 0 and math.isfinite(max_upload_mb)):
        raise ConfigError(f"max_upload_mb={max_upload_mb!r}: must be a positive number of megabytes")
    if not (isinstance(read_timeout, int | float) and read_timeout > 0 and math.isfinite(read_timeout)):
        raise ConfigError(f"read_timeout={read_timeout!r}: must be a positive number of seconds")
    if isinstance(checkpoint, dict):
        ckpt, name, sha = checkpoint, None, None
    else:
        ckpt, name, sha = load_checkpoint(checkpoint), Path(checkpoint).name, sha256_file(checkpoint)
    predictor = Predictor(
        ckpt, device=device, precision=precision, tta=tta, crf=crf, sliding_window=sliding_window,
        backend=backend, onnx_path=onnx_path, **engine_check,
    )
    service = Service(
        predictor,
        checkpoint_name=name,
        checkpoint_sha256=sha,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_image_pixels=max_image_pixels,
        workers=workers,
        max_queue=max_queue,
        max_inference_pixels=max_inference_pixels,
        read_timeout=read_timeout,
        token=token,
        allowed_hosts=allowed_hosts,
    )
    if warmup_size is not None:
        service.warm_up(warmup_size)
    service.ready = True
    log.info("fcnseg serve: %s, %d classes: %s", name or "checkpoint", len(predictor.classes), service.settings_line())
    return _build_app(service)


def _error(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 408: "request_timeout", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 503: "unavailable"}


def _build_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="fcnseg",
        version=__version__,
        description="Semantic segmentation with a Fully Convolutional Network checkpoint. "
        "Every error is JSON {\"error\": code, \"detail\": sentence}.",
    )
    app.state.service = service
    app.add_middleware(Guard, service=service)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(exc.status_code, _STATUS_CODES.get(exc.status_code, "http_error"), detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return _error(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("request %s: %s %s failed", REQUEST_ID.get(), request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", f"the server failed on this request ({type(exc).__name__}); it keeps serving")

    # read once: the page is three small files (and this works from a zipped install too)
    page = resources.files("fcnseg.serve").joinpath(STATIC)
    files = {name: page.joinpath(name).read_bytes() for name in ("index.html", *_STATIC_TYPES)}

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(files["index.html"], media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in _STATIC_TYPES:
            raise ServeError(404, "not_found", f"no static file {name!r}")
        return Response(files[name], media_type=_STATIC_TYPES[name], headers=_PAGE_HEADERS)

    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: the model is loaded", responses={503: ERROR_RESPONSES[503]})
    async def readyz():
        if service.draining:
            raise ServeError(503, "draining", "the server is shutting down; it finishes the requests it holds")
        if not service.ready:
            raise ServeError(503, "not_ready", "the model is still loading")
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=PROMETHEUS_TYPE)

    @app.get("/v1/model", summary="the model, its classes, preprocessing, test-time settings and limits", responses={401: ERROR_RESPONSES[401]})
    async def model() -> dict:
        return service.model_info()

    @app.post(
        "/v1/segment",
        summary="segment one image",
        description="Send the image as the raw body (Content-Type image/*, application/octet-stream or none) or as the "
        "multipart/form-data file field `image`. Returns the palette PNG of class indices at the "
        "image's size (pixel value = class index), or JSON (`format=json`), or the overlay JPEG "
        "with a legend (`format=overlay`).",
        responses={
            200: {
                "description": "the mask PNG, the JSON summary or the overlay JPEG",
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/Segmentation"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **ERROR_RESPONSES,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"image": {"type": "string", "format": "binary"}},
                            "required": ["image"],
                        }
                    },
                },
            }
        },
    )
    async def segment(
        request: Request,
        format: Literal["png", "json", "overlay"] = Query("png", description="png (mask), json (summary) or overlay (JPEG)"),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity"),
        include_mask: bool = Query(False, description="format=json: add the mask PNG, base64"),
    ):
        if not service.ready:
            raise ServeError(503, "not_ready", "the model is still loading")
        refused = service.busy()  # before a byte of the body is read
        if refused is not None:
            raise refused
        held = 0
        try:
            data, held = await _read_upload(request, service)
            im = open_upload(data, service.max_image_pixels)
            service.check_cost(im)
            refused = service.busy()  # others were admitted while this body arrived
            if refused is not None:
                raise refused
            service.active += 1
            try:
                done = await _unless_client_leaves(request, service, im, format, alpha, include_mask)
            finally:
                service.active -= 1
        finally:
            service.buffered -= held
        if done is None:  # nobody is left to read an answer
            service.metrics.disconnects.inc()
            log.info("request %s: the client went away before inference; dropped", REQUEST_ID.get())
            return Response(status_code=499)
        body, ms = done
        headers = {"X-Inference-Ms": f"{ms:.1f}"}
        if format == "json":
            return JSONResponse(body, headers=headers)
        media = "image/jpeg" if format == "overlay" else "image/png"
        return Response(body, media_type=media, headers=headers)

    # registered so the OpenAPI spec carries the JSON schema of format=json
    app.openapi_schema = None
    _openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = _openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Segmentation"] = (
                Segmentation.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            for model in (ClassArea, ErrorBody):
                schema["components"]["schemas"].setdefault(model.__name__, model.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


_STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# the page loads nothing from elsewhere (it must work offline); blob:/data: for the mask
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'",
    "Cache-Control": "no-cache",
}


async def _unless_client_leaves(request: Request, service: Service, *args) -> tuple | None:
    """``service.segment(*args)`` in a worker thread, or None if the client disconnects
    first: a request still waiting for a worker is then dropped (its thread never starts;
    one already running finishes, and its answer is dropped)."""
    result, gone, error = None, False, None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(service.segment, *args, limiter=service.limiter)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as e:  # raised as itself, not inside the task group's ExceptionGroup
            error = e
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return None if gone else result


async def _read_upload(request: Request, service: Service) -> tuple[bytes, int]:
    """The image bytes of a raw or multipart body and the bytes reserved for it in
    ``service.buffered`` (the caller releases them). 413 as soon as more than
    ``max_upload_bytes`` (plus multipart overhead) arrive, or when Content-Length says so
    before reading; 408 when the body takes over ``read_timeout`` seconds; 503 when the
    bodies held at once would pass ``service.max_buffered`` bytes."""
    limit = service.max_upload_bytes
    ctype = request.headers.get("content-type", "").lower()
    multipart = ctype.startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    too_big = ServeError(
        413, "payload_too_large",
        f"the upload is over the limit of {limit} bytes ({limit / 2**20:g} MB, fcnseg serve --max-upload-mb)",
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_big
    body = bytearray()
    held = 0

    def hold(n: int) -> None:
        nonlocal held
        if service.buffered + n > service.max_buffered:
            wait = service.retry_after()
            raise ServeError(
                503, "busy", f"the server holds {service.buffered} bytes of uploads (at most {service.max_buffered}); retry after {wait} s",
                headers={"Retry-After": str(wait)},
            )
        service.buffered += n
        held += n

    try:
        hold(int(length) if length.isdigit() else 0)
        with anyio.fail_after(service.read_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    raise too_big
                if len(body) > held:
                    hold(len(body) - held)
    except TimeoutError:
        service.buffered -= held
        raise ServeError(
            408, "request_timeout",
            f"the body did not arrive within {service.read_timeout:g} s (fcnseg serve --read-timeout); send it faster or a smaller image",
        ) from None
    except ClientDisconnect:  # nobody will read the answer; keep the log free of tracebacks
        service.buffered -= held
        raise ServeError(400, "client_disconnected", "the client closed the connection during the upload") from None
    except BaseException:
        service.buffered -= held
        raise
    try:
        return await _image_bytes(request, body, multipart, limit, too_big), held
    except BaseException:
        service.buffered -= held
        raise


async def _image_bytes(request: Request, body: bytearray, multipart: bool, limit: int, too_big: ServeError) -> bytes:
    """The image in a whole body: the body itself, or the multipart file field."""
    if not multipart:
        return bytes(body)

    async def replay():
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except StarletteHTTPException as e:
        raise ServeError(400, "bad_multipart", f"cannot parse the multipart body: {e.detail}") from None
    try:
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k == "image"]
        files = files or [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ServeError(400, "empty_body", "the multipart body has no file; send the image as the field 'image'")
        data = await files[0].read()
    finally:
        await form.close()
    if len(data) > limit:
        raise too_big
    return data


# ---------------------------------------------------------------------------- guard, metrics


class Metrics:
    """The Prometheus series of one app (a registry of its own: several apps in a process
    do not share counters)."""

    def __init__(self, service: Service) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fcnseg_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r)
        self.errors = Counter("fcnseg_errors", "answers with status >= 400, by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("fcnseg_request_seconds", "time from the request's start to its answer, by route", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.inference = Histogram("fcnseg_inference_seconds", "model time per image", registry=r,
                                   buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.disconnects = Counter("fcnseg_client_disconnects", "requests dropped because the client went away", registry=r)
        Gauge("fcnseg_queue_requests", "requests admitted: in inference or waiting for a worker", registry=r).set_function(lambda: service.active)
        Gauge("fcnseg_queue_limit", "workers + max_queue", registry=r).set_function(lambda: service.workers + service.max_queue)
        Gauge("fcnseg_upload_bytes_held", "bytes of request bodies held", registry=r).set_function(lambda: service.buffered)


def _host_name(value: str) -> str:
    """The name of a Host header value, without the port: ``[::1]:8000`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware in front of every route: request id, Host allow-list, bearer token,
    body type; one log line and the metrics per request."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    def refuse(self, scope, headers: dict[str, str]) -> JSONResponse | None:
        service, path = self.service, scope["path"]
        if service.allowed_hosts is not None and path not in OPEN_PATHS:
            host = _host_name(headers.get("host", ""))
            if host not in service.allowed_hosts:
                return _error(
                    400, "host_not_allowed",
                    f"Host {headers.get('host', '')!r} is not served here (allowed: {', '.join(sorted(service.allowed_hosts))}); "
                    "start fcnseg serve with --allowed-host NAME for the name clients use",
                )
        if service.token and (path.startswith("/v1/") or path == "/metrics"):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), service.token.encode()):
                return _error(
                    401, "unauthorized",
                    "this server needs its token: send the header 'Authorization: Bearer TOKEN' (the value of FCNSEG_TOKEN / --token)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith(BODY_TYPES):
                return _error(
                    415, "unsupported_media_type",
                    f"Content-Type {ctype!r} is not accepted; send the image with Content-Type image/png, image/jpeg, ... "
                    "(curl -H 'Content-Type: image/jpeg' --data-binary @FILE) or as multipart/form-data (curl -F image=@FILE)",
                )
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get("x-request-id", "")
        rid = given if _PLAIN_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        status, started, t0 = 500, False, time.perf_counter()

        async def send_with_id(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", rid.encode())]}
            await send(message)

        path = scope["path"]
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        try:
            refusal = self.refuse(scope, headers)
            await (refusal or self.app)(scope, receive, send_with_id)
        except Exception as exc:  # answered here, so that the 500 carries the request id too
            log.error("request %s: %s %s failed", rid, scope["method"], path, exc_info=exc)
            if started:
                raise
            detail = f"the server failed on this request ({type(exc).__name__}); it keeps serving"
            await _error(500, "internal_error", detail)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            m = self.service.metrics
            m.requests.labels(route, str(status)).inc()
            m.latency.labels(route).observe(seconds)
            if status >= 400:
                m.errors.labels(route, str(status)).inc()
            log.info("request %s: %s %s %d %.1f ms", rid, scope["method"], path, status, 1000 * seconds)
            REQUEST_ID.reset(token)
