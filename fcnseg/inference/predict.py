"""Segmenting image files with a trained checkpoint.

For every input image ``NAME.ext`` the output folder gets

- ``NAME.png``: a palette-mode PNG of class indices at the input's size (palette from the
  checkpoint, so viewers show colours while the pixel values stay class indices);
- ``NAME_overlay.jpg``: the image blended with the colourised prediction at opacity
  ``alpha``, above a legend strip naming the classes present;
- ``NAME_probs.npy`` (``save_probs``): float16 softmax probabilities ``(K, H, W)`` (after the
  CRF when ``crf`` is given).

Inputs of the same stem (``x/a.jpg`` and ``y/a.jpg``, or ``a.jpg`` and ``a.png``) get
``a``, ``a-2``, ``a-3`` ... in input order (names another input has are skipped). Nothing
on disk is replaced unasked: an output that would replace an input is refused, and outputs
already in the folder need ``skip_existing`` (keep them; a re-run resumes) or ``overwrite``.
Each file is written to a temporary name and renamed.

Inputs are files, folders (their images, not recursive) and glob patterns. They are checked
before any work (a path that does not exist, or a folder or pattern without images, is an
error and nothing runs); an image that fails to decode during the run is skipped, the others
are written, and ``PredictFailures`` (a DataError listing each failed file) is raised at the
end — the CLI prints the list and exits with code 1.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fcnseg.checkpoint import (
    atomic_write,
    check_output_dir,
    checkpoint_meta,
    ensure_output_dir,
    load_checkpoint,
)
from fcnseg.data.base import IMAGE_EXTENSIONS, image_to_rgb, list_images, make_palette, open_image
from fcnseg.data.show import overlay
from fcnseg.data.transforms import eval_transforms
from fcnseg.errors import ConfigError, DataError
from fcnseg.inference.crf import CRF, parse_crf
from fcnseg.inference.segment import (
    TTA,
    checkpoint_inference,
    labels,
    parse_tta,
    parse_window,
    segment,
)
from fcnseg.inference.stream import Writer, prefetch
from fcnseg.precision import resolve_device, resolve_precision

IO_WORKERS = 2  # threads decoding ahead of the model and encoding behind it (fcnseg.inference.stream)
log = logging.getLogger(__name__)


class PredictFailures(DataError):
    """Some inputs could not be read; the others were written (``written``).
    ``failures`` lists (path, reason)."""

    def __init__(self, failures: list[tuple[Path, str]], written: list[Path], total: int) -> None:
        self.failures = failures
        self.written = written
        names = ", ".join(str(p) for p, _ in failures[:5]) + (" ..." if len(failures) > 5 else "")
        super().__init__(
            f"{len(failures)} of {total} inputs could not be read ({names}); the outputs of "
            f"the other {total - len(failures)} were written"
        )


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def resolve_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (their image files, sorted) and glob patterns (matching image files,
    sorted) → unique paths in order. A missing path → DataError; a folder or pattern without
    images, or no inputs at all → ConfigError."""
    out: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ConfigError(
                    f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "pass image files, a folder of images or a glob like 'photos/*.jpg'"
                )
            out += found
        elif path.is_file():
            out.append(path)
        elif _has_magic(text):
            matches = sorted(
                Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise ConfigError(
                    f"no image files match {text!r}; check the pattern (quote it so the shell "
                    "does not expand it) and the folder"
                )
            out += matches
        else:
            raise DataError(f"input {path} not found; pass existing image files, folders or globs")
    if not out:
        raise ConfigError("no inputs given; pass image files, folders or globs")
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _output_names(paths: Sequence[Path]) -> list[str]:
    """``NAME`` per input: its stem; inputs whose stems are equal (case-insensitively, for
    macOS and Windows folders) get ``NAME``, ``NAME-2``, ``NAME-3`` ... in input order,
    skipping any name another input already has, so no two inputs share an output."""
    count: dict[str, int] = {}
    for p in paths:
        count[p.stem.casefold()] = count.get(p.stem.casefold(), 0) + 1
    used = {p.stem.casefold() for p in paths if count[p.stem.casefold()] == 1}
    names = []
    for p in paths:
        name, k = p.stem, 2
        if count[p.stem.casefold()] > 1:
            while name.casefold() in used:
                name, k = f"{p.stem}-{k}", k + 1
            used.add(name.casefold())
        names.append(name)
    return names


def output_paths(out: Path, name: str, save_probs: bool) -> list[Path]:
    """The files one input ``NAME`` gets in ``out``."""
    return [out / f"{name}.png", out / f"{name}_overlay.jpg", *([out / f"{name}_probs.npy"] if save_probs else [])]


def check_outputs(paths: Sequence[Path], names: Sequence[str], out: Path, *, save_probs: bool, skip_existing: bool, overwrite: bool) -> list[bool]:
    """Checks the outputs before any work; per input, whether its outputs all exist already
    (``skip_existing``: it is skipped). An output that would replace an input file is a
    ``ConfigError`` naming it (``overwrite`` or not); outputs already on disk are one unless
    ``skip_existing`` (keep them) or ``overwrite`` (replace them) is given."""
    inputs = {os.path.normcase(os.path.realpath(p)): p for p in paths}
    done, existing = [], []
    for name in names:
        outs = output_paths(out, name, save_probs)
        for o in outs:
            hit = inputs.get(os.path.normcase(os.path.realpath(o)))
            if hit is not None:
                raise ConfigError(f"output {o} would replace the input {hit}; pass another --out folder (not the inputs' own)")
        there = [o for o in outs if o.exists()]
        done.append(skip_existing and len(there) == len(outs))
        existing += there
    if existing and not (skip_existing or overwrite):
        shown = ", ".join(str(o) for o in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise ConfigError(
            f"--out {out} already holds {len(existing)} of the outputs ({shown}); pass --skip-existing to keep "
            "them and segment the rest, --overwrite to replace them, or another --out folder"
        )
    return done


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB (EXIF orientation applied; grey, RGBA, CMYK, 16-bit converted).
    DataError naming the file if it cannot be decoded."""
    try:
        return image_to_rgb(open_image(path, "image"))
    except DataError as e:
        raise DataError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def legend_strip(width: int, present: Sequence[int], classes: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """A white strip ``width`` pixels wide listing a colour swatch and name per class in
    ``present``, wrapped onto as many rows as needed: uint8 (h, width, 3)."""
    size = int(np.clip(width / 40, 11, 22))
    font = _font(size)
    pad, sw = size // 2, size
    items, x, y = [], pad, pad
    for c in present:
        label = classes[c] if c < len(classes) else str(c)
        tw = int(np.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)))
        item_w = sw + pad // 2 + tw
        if x > pad and x + item_w > width - pad:
            x, y = pad, y + size + pad
        items.append((x, y, c, label))
        x += item_w + 2 * pad
    strip = Image.new("RGB", (width, y + size + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, y, c, label in items:
        colour = tuple(int(v) for v in palette[c])
        draw.rectangle((x, y, x + sw - 1, y + sw - 1), fill=colour, outline=(0, 0, 0))
        draw.text((x + sw + pad // 2, y + sw / 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(strip)


def palette_png(pred: np.ndarray, palette: np.ndarray) -> Image.Image:
    """(H, W) class indices → a palette-mode PIL image (pixel values stay the indices)."""
    im = Image.fromarray(pred.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.reshape(-1).tolist())
    return im


class Predictor:
    """A checkpoint loaded for inference with fixed settings: the one inference path of
    ``predict()`` and ``fcnseg serve`` (so a served mask equals ``predict``'s).

    ``checkpoint``: a path or the loaded dict. ``tta``/``crf``: ``"auto"`` applies the ones the
    training run saved (config ``eval_tta``/``eval_crf``), ``None``/``"none"`` none, else a
    spec. ``device``: None/"auto" = cuda when available. ``model``: what to run instead of the
    checkpoint's network, any callable (N, 3, H, W) normalised float → (N, K, H, W) logits
    (e.g. another inference backend); the checkpoint still gives classes, palette and
    normalisation. ``backend``: the engine that runs the checkpoint's network when ``model`` is
    not given (``fcnseg.inference.backends``: auto (default), torch, compile, onnxruntime,
    openvino; the non-torch ones run fp32), ``onnx_path`` an exported file for the ONNX ones. Attributes: ``classes``, ``palette`` (uint8 (K, 3)), ``mean``/``std``,
    ``model``, ``device``, ``precision``, ``tta``, ``crf``, ``window``, ``checkpoint`` (dict)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | dict,
        *,
        device: str | torch.device | None = None,
        precision: str = "auto",
        tta: str | TTA | None = "auto",
        crf: str | CRF | None = "auto",
        sliding_window: int | str | Sequence[int] | None = None,
        model: Callable[[torch.Tensor], torch.Tensor] | None = None,
        backend: str = "auto",
        onnx_path: str | os.PathLike | None = None,
        calib_data: str | None = None,
        calib_root: str | os.PathLike | None = None,
        calib_split: str | None = None,
        tolerance=None,
    ) -> None:
        tta = tta if tta == "auto" else parse_tta(tta)
        crf = crf if crf == "auto" else parse_crf(crf)
        self.window = parse_window(sliding_window)
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.checkpoint = ckpt
        self.tta, self.crf = checkpoint_inference(ckpt, tta, crf)
        self.classes, palette, self.mean, self.std = checkpoint_meta(ckpt)
        if len(palette) < len(self.classes):
            palette = np.concatenate([palette, make_palette(len(self.classes))[len(palette):]])
        self.palette = palette
        self.device = resolve_device(str(device) if device is not None else None)
        if isinstance(model, torch.nn.Module):  # the caller's module, run in `precision`
            self.precision = resolve_precision(precision, self.device)
            model = model.to(self.device).eval()
        elif model is None:
            from fcnseg.inference.loader import load_engine

            model = load_engine(
                ckpt, backend, precision, self.device, onnx_path=onnx_path, data=calib_data,
                data_root=calib_root, split=calib_split, tolerance=tolerance,
            )
        if not isinstance(model, torch.nn.Module):
            self.precision = resolve_precision("fp32", self.device, quiet=True)  # an engine runs its own
        self.model = model
        self._prep = eval_transforms(mean=self.mean, std=self.std)  # exactly what `fcnseg eval` feeds the model

    @property
    def backend(self) -> str:
        """The engine that runs: ``torch``, a backend's name, ``auto (onnxruntime)`` for auto."""
        from fcnseg.inference.backends import backend_name

        return backend_name(self.model)

    @property
    def precision_name(self) -> str:
        """What the model computes in: fp32, bf16 or int8 (the engine's)."""
        if isinstance(self.model, torch.nn.Module):
            return self.precision.name
        return getattr(self.model, "precision_name", "fp32")

    @property
    def engine(self) -> dict:
        """How the engine was chosen (``fcnseg.inference.loader.engine_evidence``)."""
        from fcnseg.inference.loader import engine_evidence

        return engine_evidence(self.model)

    def describe(self) -> str:
        """The test-time settings and engine, e.g. ``TTA flip (2 views), no CRF, backend torch, cpu bf16``."""
        tta = f"TTA {self.tta} ({self.views} views)" if self.tta is not None else "no TTA (1 view)"
        crf = f"CRF {self.crf}" if self.crf is not None else "no CRF"
        return f"{tta}, {crf}, backend {self.backend}, {self.device.type} {self.precision_name}"

    @property
    def views(self) -> int:
        """Forward passes per image for the TTA (1 without)."""
        return 1 if self.tta is None else self.tta.views

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray], *, probs: bool = False) -> list[torch.Tensor]:
        """uint8 (H_i, W_i, 3) RGB images → float32 (K, H_i, W_i) score maps (logits, or
        softmax probabilities with ``probs``/TTA/CRF; see ``segment``), in one forward pass
        when the images share a size."""
        tensors = [self._prep(im, np.zeros(im.shape[:2], np.uint8))[0] for im in images]
        return segment(
            self.model, tensors, device=self.device, precision=self.precision, tta=self.tta,
            sliding_window=self.window, probs=probs, crf=self.crf, std=self.std,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB → uint8 (H, W) class indices."""
        return labels(self.scores([image])[0]).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike | dict,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    alpha: float = 0.5,
    save_probs: bool = False,
    device: str | torch.device | None = None,
    precision: str = "auto",
    tta: str | TTA | None = "auto",
    sliding_window: int | str | Sequence[int] | None = None,
    progress: bool = False,
    crf: str | CRF | None = "auto",
    model: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str = "auto",
    onnx_path: str | os.PathLike | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    calib_data: str | None = None,
    calib_root: str | os.PathLike | None = None,
    calib_split: str | None = None,
    tolerance=None,
) -> list[Path]:
    """Segments every input image with a checkpoint (a path, or the loaded dict) and writes
    its outputs to ``out_dir`` (see the module docstring), as ``fcnseg predict`` does.
    Images are batched ``batch_size`` at a time among images of the same size, so results
    do not depend on the batch. ``tta``/``crf``/``device``/``model``/``backend``/``onnx_path``: as
    ``Predictor``.
    Outputs never replace an input; outputs already in ``out_dir`` are an error unless
    ``skip_existing`` (inputs whose outputs all exist are skipped: a re-run resumes) or
    ``overwrite``. Every file is written to a temporary name and renamed, so a killed run
    leaves whole files only. A write that fails (disk full, read-only folder) stops the run
    with ``OutputError``.
    Returns the written paths; raises ``PredictFailures`` after the run if some images
    could not be decoded."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: the overlay opacity must be in [0, 1]")
    tta = tta if tta == "auto" else parse_tta(tta)
    parse_window(sliding_window)
    crf = crf if crf == "auto" else parse_crf(crf)
    paths = resolve_inputs(inputs)  # argument errors before the checkpoint is loaded
    check_output_dir(out_dir)
    names = _output_names(paths)
    done = check_outputs(paths, names, Path(out_dir), save_probs=save_probs, skip_existing=skip_existing, overwrite=overwrite)
    if any(done):
        log.info("fcnseg predict: %d of %d inputs already have their outputs in %s (--skip-existing): skipped", sum(done), len(paths), out_dir)
        paths = [p for p, d in zip(paths, done, strict=True) if not d]
        names = [n for n, d in zip(names, done, strict=True) if not d]
        if not paths:
            return []
    predictor = Predictor(
        checkpoint, device=device, precision=precision, tta=tta, crf=crf,
        sliding_window=sliding_window, model=model, backend=backend, onnx_path=onnx_path,
        calib_data=calib_data, calib_root=calib_root, calib_split=calib_split, tolerance=tolerance,
    )
    classes, palette = predictor.classes, predictor.palette
    log.info("fcnseg predict: %d image%s: %s", len(paths), "" if len(paths) == 1 else "s", predictor.describe())
    log.info("%s", predictor.engine["summary"])
    model_seconds, done = 0.0, 0

    out = ensure_output_dir(out_dir)
    started = time.perf_counter()
    failures: list[tuple[Path, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True)

    def load(item: tuple[Path, str]) -> tuple[Path, str, np.ndarray | None, str | None]:
        try:
            return item[0], item[1], read_image(item[0]), None
        except DataError as e:
            return item[0], item[1], None, str(e)

    def run(batch: list) -> None:
        nonlocal model_seconds, done
        t = time.perf_counter()
        scores = predictor.scores([im for _, _, im in batch], probs=save_probs)
        model_seconds, done = model_seconds + time.perf_counter() - t, done + len(batch)
        for (_path, name, image), score in zip(batch, scores, strict=True):
            writer.submit(_write, out, name, image, score, save_probs, alpha, classes, palette)
            if bar is not None:
                bar.update(1)

    # Decoding runs ahead of the model and encoding behind it, in threads (fcnseg.inference.stream);
    # images wait in per-size groups (at most 4 batches' worth in all) until a group fills a
    # batch, so a batch only holds images of one size and results do not depend on the batch.
    ahead = 4 * batch_size
    writer = Writer(workers=IO_WORKERS, pending=ahead)
    groups: dict[tuple[int, int], list] = {}
    waiting = 0
    try:
        for path, name, image, error in prefetch(load, zip(paths, names, strict=True), workers=IO_WORKERS, ahead=ahead):
            if error is not None:
                failures.append((path, error))
                log.error("skipping %s", error)
                if bar is not None:
                    bar.update(1)
                continue
            group = groups.setdefault(image.shape[:2], [])
            group.append((path, name, image))
            waiting += 1
            if len(group) == batch_size:
                run(groups.pop(image.shape[:2]))
                waiting -= batch_size
            if waiting >= ahead:
                for g in groups.values():
                    run(g)
                groups, waiting = {}, 0
        for g in groups.values():
            run(g)
    except BaseException as e:  # stop: finish or drop the queued writes, keep the first error
        writer.__exit__(type(e), e, e.__traceback__)
        raise
    results = writer.close()
    written = [path for paths_ in results for path in paths_]
    if bar is not None:
        bar.close()
    if done:
        log.info(
            "fcnseg predict: %.0f ms of inference per image; %.1f images/s in all",
            1000 * model_seconds / done, done / max(time.perf_counter() - started, 1e-9),
        )
    if failures:
        raise PredictFailures(failures, written, len(paths))
    return written


def overlay_with_legend(
    image: np.ndarray, pred: np.ndarray, classes: Sequence[str], palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """``image`` uint8 (H, W, 3) blended with the colourised ``pred`` (H, W) at opacity
    ``alpha``, above a legend strip of the classes present: uint8 (H + h, W, 3)."""
    blend = overlay(image, pred, palette, alpha)
    present = np.flatnonzero(np.bincount(pred.reshape(-1), minlength=len(classes)))
    strip = legend_strip(blend.shape[1], present.tolist(), classes, palette)
    return np.concatenate([blend, strip], axis=0)


def _write(
    out: Path,
    name: str,
    image: np.ndarray,
    score: torch.Tensor,
    save_probs: bool,
    alpha: float,
    classes: Sequence[str],
    palette: np.ndarray,
) -> list[Path]:
    """Writes the outputs for one image, each atomically; ``score`` (K, H, W) at the image's size."""
    pred = labels(score).to(torch.uint8).cpu().numpy()
    paths = output_paths(out, name, save_probs)
    fix = "or pass another --out; re-run with --skip-existing to keep what was written"
    atomic_write(paths[0], lambda f: palette_png(pred, palette).save(f, format="PNG"), what="prediction", fix=fix)
    blend = Image.fromarray(overlay_with_legend(image, pred, classes, palette, alpha))
    atomic_write(paths[1], lambda f: blend.save(f, format="JPEG", quality=92, subsampling=0), what="overlay", fix=fix)
    if save_probs:
        probs = score.to(torch.float16).cpu().numpy()
        atomic_write(paths[2], lambda f: np.save(f, probs), what="probabilities", fix=fix)
    return paths
