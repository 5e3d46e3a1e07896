"""Test-time settings as specs a user writes (flags, YAML, the API) and the values they parse
to: ``TTA``/``parse_tta``, ``CRF``/``parse_crf``, ``parse_window``. A leaf module (it imports
only fcnseg.errors), so the config, the inference code and the CLI share one parser each
without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fcnseg.errors import ConfigError


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: average over ``scales`` (x) ``flip`` (plain and mirrored) (x)
    ``rot90`` (the four quarter turns: for data without an up, trained with ``rotate90``)."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    rot90: bool = False

    @property
    def trivial(self) -> bool:
        return not self.flip and not self.rot90 and self.scales == (1.0,)

    @property
    def views(self) -> int:
        """Views per image (each scale's, mirrored and turned)."""
        return len(self.scales) * (2 if self.flip else 1) * (4 if self.rot90 else 1)

    def __str__(self) -> str:
        parts = (["flip"] if self.flip else []) + (["rot90"] if self.rot90 else [])
        if self.scales != (1.0,) or not parts:
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts)


def parse_tta(spec: str | TTA | None) -> TTA | None:
    """``"flip"``, ``"scales=0.75,1,1.25"``, ``"flip,scales=0.5,1"``, ``"flip,rot90"`` → TTA;
    ``None``/``""``/``"none"`` → None. Numbers after ``scales=`` run until the next word."""
    if spec is None or isinstance(spec, TTA):
        return spec
    text = str(spec).strip().lower()
    if text in ("", "none", "off"):
        return None
    flip, rot90, scales, in_scales = False, False, [], False
    for tok in (t.strip() for t in text.replace(" ", ",").split(",")):
        if not tok:
            continue
        if tok == "flip":
            flip, in_scales = True, False
            continue
        if tok == "rot90":
            rot90, in_scales = True, False
            continue
        if tok.startswith("scales=") or tok.startswith("scale="):
            tok, in_scales = tok.split("=", 1)[1], True
        if not in_scales:
            raise ConfigError(
                f"cannot read TTA spec {spec!r} at {tok!r}; "
                "write e.g. 'flip', 'scales=0.75,1,1.25', 'flip,scales=0.75,1,1.25' or 'flip,rot90' (or 'none')"
            )
        try:
            scale = float(tok)
        except ValueError:
            raise ConfigError(
                f"TTA scale {tok!r} in {spec!r} is not a number; write e.g. 'scales=0.75,1,1.25'"
            ) from None
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"TTA scale {tok!r} in {spec!r} must be a positive number")
        scales.append(scale)
    if in_scales and not scales:
        raise ConfigError(f"TTA spec {spec!r} names no scales; write e.g. 'scales=0.75,1,1.25'")
    return TTA(flip=flip, scales=tuple(scales) if scales else (1.0,), rot90=rot90)


def training_scale(scale: Sequence[float] | None) -> float:
    """The image scale a run trained at: the middle of its ``scale`` range ([0.75, 1.25]: 1)."""
    if not scale:
        return 1.0
    return float(f"{(float(scale[0]) + float(scale[-1])) / 2:.4g}")


def run_tta(spec: str | None, scale: Sequence[float] | None) -> str | None:
    """A run's ``eval_tta`` as it evaluates: ``"auto"`` (chosen on the validation split at the
    end of the run; until then, and in a checkpoint saved before the choice) is one view at the
    training scale."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        s = training_scale(scale)
        return None if abs(s - 1.0) < 1e-3 else f"scales={s:g}"
    return spec


def eval_scale(spec: str | None, scale: Sequence[float] | None) -> float:
    """The image scale a run evaluates at by default: the middle scale of its ``eval_tta``
    (``"auto"``: the training scale), 1 without one. What its engine sees."""
    tta = parse_tta(run_tta(spec, scale))
    if tta is None:
        return 1.0
    scales = sorted(tta.scales)
    return float(scales[len(scales) // 2])


def run_crf(spec: str | None) -> str | None:
    """A run's ``eval_crf`` as it evaluates: ``"auto"`` (not yet chosen) is none."""
    return None if isinstance(spec, str) and spec.strip().lower() == "auto" else spec


def parse_window(spec: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """``512`` / ``"512"`` → (512, 512); ``"512x1024"`` or ``(512, 1024)`` → (h, w); None → None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "none", "off"):
            return None
        parts = text.replace(",", "x").split("x")
    elif isinstance(spec, int):
        parts = [spec]
    else:
        parts = list(spec)
    try:
        size = [int(p) for p in parts]
    except (TypeError, ValueError):
        size = []
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(
            f"sliding window {spec!r} is not a size; give one positive integer (512) or HxW (512x1024)"
        )
    return size[0], size[1]


@dataclass(frozen=True)
class CRF:
    """Parameters of the local dense CRF (positions in pixels of the score map, colours 0-255).

    The defaults were chosen on the first half of CamVid val (docs/experiments/camvid.md): a window of
    17x17 samples two pixels apart (+-16 pixels), a weak appearance kernel, no smoothness kernel.
    """

    iterations: int = 5
    appearance: float = 1.5  # w_a
    theta_a: float = 10.0  # spatial std of the appearance kernel (pixels)
    theta_b: float = 5.0  # colour std of the appearance kernel (0-255 units)
    smoothness: float = 0.0  # w_s (off by default: on CamVid it erases thin objects such as poles)
    theta_s: float = 1.0  # spatial std of the smoothness kernel (pixels)
    radius: int = 8  # window half-width, in samples
    dilation: int = 2  # pixels between samples of the window

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.radius < 1 or self.dilation < 1:
            raise ConfigError(f"CRF {self}: iterations must be >= 0, radius and dilation >= 1")
        if min(self.theta_a, self.theta_b, self.theta_s) <= 0:
            raise ConfigError(f"CRF {self}: the kernels' standard deviations must be positive")
        if min(self.appearance, self.smoothness) < 0:
            raise ConfigError(f"CRF {self}: the kernel weights must be >= 0")

    def __str__(self) -> str:
        """The spec ``parse_crf`` reads back: the fields that differ from the defaults."""
        parts = [
            f"{f}={getattr(self, f):g}"
            for f in self.__dataclass_fields__
            if getattr(self, f) != self.__dataclass_fields__[f].default
        ]
        return ",".join(parts) or "default"


_FIELDS = {f: type(getattr(CRF(), f)) for f in CRF.__dataclass_fields__}


def parse_crf(spec: str | dict | CRF | None) -> CRF | None:
    """``"default"`` → CRF(); ``"appearance=2,theta_b=5"`` (or a dict) → CRF with those fields
    changed; ``None``/``""``/``"none"`` → None."""
    if spec is None or isinstance(spec, CRF):
        return spec
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        text = str(spec).strip().lower()
        if text in ("", "none", "off"):
            return None
        items = []
        for tok in (t.strip() for t in text.replace(" ", ",").split(",")):
            if not tok or tok in ("default", "on", "crf"):
                continue
            if "=" not in tok:
                raise ConfigError(
                    f"cannot read CRF spec {spec!r} at {tok!r}; write 'default' or key=value pairs, "
                    f"e.g. 'appearance=2,theta_b=5' (keys: {', '.join(_FIELDS)}), or 'none'"
                )
            items.append(tuple(tok.split("=", 1)))
    kwargs = {}
    for key, value in items:
        key = str(key).strip()
        if key not in _FIELDS:
            raise ConfigError(f"CRF spec {spec!r}: unknown key {key!r}; the keys are {', '.join(_FIELDS)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"CRF spec {spec!r}: {key}={value!r} is not a number") from None
        if not math.isfinite(number) or (_FIELDS[key] is int and number != int(number)):
            raise ConfigError(f"CRF spec {spec!r}: {key} must be a finite {_FIELDS[key].__name__}, got {value!r}")
        kwargs[key] = _FIELDS[key](number)
    return CRF(**kwargs)

