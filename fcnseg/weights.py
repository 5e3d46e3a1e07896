"""Pretrained weights: a declared table of hashed torchvision checkpoints, explicit
conversion into fcnseg backbones, and loading of fcnseg checkpoints.

``build_model(..., weights=...)`` calls :func:`load_weights`:

* ``"imagenet"``: the backbone's torchvision ImageNet checkpoint from :data:`WEIGHTS`,
  fetched with ``torch.hub.load_state_dict_from_url(check_hash=True)`` into
  ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``) and converted by
  :func:`convert_vgg` / :func:`convert_resnet`;
* a path to a torchvision-format backbone state dict (converted the same way), an fcnseg
  checkpoint (a dict with ``model`` and ``model_config``, see docs/design.md) or a bare
  fcnseg ``model.state_dict()``: the whole model, strictly, except that head tensors whose
  shape depends on ``num_classes`` are dropped with a warning when it differs.

Every conversion checks every key and shape, lists missing / unexpected keys in the
error, and copies with ``copy_()`` under ``no_grad`` (no aliasing of the loaded tensors).
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.parse
import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from fcnseg.errors import ConfigError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BASE = "https://download.pytorch.org/models/"


def _imagenet(file_name: str, source: str) -> dict:
    return {
        "url": _BASE + file_name,
        # torch.hub checks the SHA-256 of the download against this prefix of the name
        "sha256": file_name.rsplit("-", 1)[1].split(".")[0],
        "source": source,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "input": "RGB, float in 0..1, then (x - mean) / std",
        "num_categories": 1000,
    }


# backbone -> weights name -> entry. The VGG entries must be IMAGENET1K_V1: torchvision's
# VGG16_Weights.IMAGENET1K_FEATURES has NaN classifier weights, useless for fc6/fc7.
WEIGHTS: dict[str, dict[str, dict]] = {
    "vgg16": {
        "imagenet": _imagenet("vgg16-397923af.pth", "torchvision VGG16_Weights.IMAGENET1K_V1")
    },
    "vgg16_bn": {
        "imagenet": _imagenet("vgg16_bn-6c64b313.pth", "torchvision VGG16_BN_Weights.IMAGENET1K_V1")
    },
    "resnet18": {
        "imagenet": _imagenet("resnet18-f37072fd.pth", "torchvision ResNet18_Weights.IMAGENET1K_V1")
    },
    "resnet34": {
        "imagenet": _imagenet("resnet34-b627a593.pth", "torchvision ResNet34_Weights.IMAGENET1K_V1")
    },
    # V1 (top-1 76.1) rather than V2 (80.9, resnet50-11ad3fa6): V2's long, heavily
    # regularised recipe transfers no better to segmentation and V1 matches the others
    "resnet50": {
        "imagenet": _imagenet("resnet50-0676ba61.pth", "torchvision ResNet50_Weights.IMAGENET1K_V1")
    },
    "resnet101": {
        "imagenet": _imagenet(
            "resnet101-63fe2227.pth", "torchvision ResNet101_Weights.IMAGENET1K_V1"
        )
    },
}


def preprocessing(backbone: str, weights: str | PathLike | None = "imagenet") -> dict[str, tuple]:
    """``{"mean": (r, g, b), "std": (r, g, b)}`` (RGB, 0..1 scale) the weights expect.

    Every declared entry is ImageNet-trained, and models trained from them (or from
    scratch, ``weights=None``) are normalised the same way, so this is ImageNet's
    statistics for every backbone; it raises ``ConfigError`` for an unknown backbone."""
    if backbone not in WEIGHTS:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {', '.join(WEIGHTS)}")
    entry = WEIGHTS[backbone].get(weights if isinstance(weights, str) else "imagenet")
    if entry is None:  # a weights file
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return {"mean": tuple(entry["mean"]), "std": tuple(entry["std"])}


def manual_path(url: str) -> Path:
    """Where torch.hub looks for (and caches) the file of ``url``."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch(url: str, *, progress: bool = True) -> dict[str, Tensor]:
    """Download (once) and hash-check a torchvision checkpoint; its state dict on CPU."""
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise WeightsError(
            f"downloaded {url} but its SHA-256 does not match the prefix in its name ({e}); "
            f"the download is corrupt or not the published file: retry, or put the right file "
            f"at {manual_path(url)}"
        ) from e
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections, disk errors
        raise WeightsError(
            f"could not fetch {url} ({e}); offline? download it by hand and put it at "
            f"{manual_path(url)} (set TORCH_HOME to change $TORCH_HOME/hub/checkpoints)"
        ) from e


# ---------------------------------------------------------------------------------------
# torchvision -> fcnseg backbone conversion


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """RGB first-conv weights ``(O, 3, k, k)`` for ``in_channels`` inputs.

    1 channel: the sum over RGB, so a grey image gives exactly what the RGB net gives for
    that image replicated to three channels. Otherwise the RGB filters repeat cyclically,
    scaled by ``3 / in_channels`` to keep the activations' scale (timm does the same)."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = weight.repeat(1, (in_channels + 2) // 3, 1, 1)[:, :in_channels]
    return reps * (3 / in_channels)


def convert_vgg(state: Mapping[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """torchvision VGG16(-BN) keys -> ``backbone``'s: ``features.*`` as is, ``classifier.0``
    (Linear 25088 -> 4096) -> ``fc6`` (4096, 512, 7, 7), ``classifier.3`` -> ``fc7``
    (4096, 4096, 1, 1); ``classifier.6`` (the 1000 classes) is dropped, and the whole
    classifier when the backbone has no fc layers (seed). Keys it does not know are passed
    through so that :func:`copy_strict` reports them."""
    with_fc = getattr(backbone, "with_fc", False)
    fc = {"classifier.0": ("fc6", (4096, 512, 7, 7)), "classifier.3": ("fc7", (4096, 4096, 1, 1))}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        layer, _, kind = k.rpartition(".")
        if k.startswith("classifier.6.") or (k.startswith("classifier.") and not with_fc):
            continue
        if layer in fc and kind in ("weight", "bias"):
            dst, shape = fc[layer]
            if kind == "weight":
                if v.numel() != torch.Size(shape).numel():
                    raise WeightsError(
                        f"{k} has shape {tuple(v.shape)}; VGG16's is ({shape[0]}, "
                        f"{torch.Size(shape[1:]).numel()}): not a VGG16 checkpoint"
                    )
                if not torch.isfinite(v).all():
                    raise WeightsError(
                        f"{k} has NaN/inf values: this is VGG16 IMAGENET1K_FEATURES, whose "
                        "classifier is untrained; fc6/fc7 need IMAGENET1K_V1 (vgg16-397923af.pth)"
                    )
                v = v.reshape(shape)
            out[f"{dst}.{kind}"] = v
        else:
            out[k] = v
    return out


def convert_resnet(state: Mapping[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """torchvision ResNet keys are the backbone's; ``fc.*`` (the 1000 classes) is dropped."""
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def copy_strict(target: Mapping[str, Tensor], state: Mapping[str, Tensor], *, source: str) -> None:
    """Copy ``state`` into the tensors of ``target`` (a state dict) after checking that
    every key and shape matches (BatchNorm ``num_batches_tracked`` may be absent)."""
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{source} does not fit the model: missing keys {_short(missing)}; unexpected keys "
            f"{_short(unexpected)}; shape mismatches (file vs model) {_short(wrong)}"
        )
    with torch.no_grad():
        for k, v in state.items():
            target[k].copy_(v)


def load_backbone_state(backbone: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Convert a torchvision-format state dict and load it into ``backbone``, adapting the
    first conv to the backbone's input channels (see :func:`adapt_first_conv`)."""
    from fcnseg.models.backbones import VGG, ResNet

    if isinstance(backbone, VGG):
        converted, first = convert_vgg(state, backbone), "features.0.weight"
    elif isinstance(backbone, ResNet):
        converted, first = convert_resnet(state, backbone), "conv1.weight"
    else:
        raise WeightsError(f"no torchvision conversion for backbone {type(backbone).__name__}")
    if first in converted:
        in_channels = backbone.state_dict()[first].shape[1]
        converted[first] = adapt_first_conv(converted[first], in_channels)
    copy_strict(backbone.state_dict(), converted, source=source)


# ---------------------------------------------------------------------------------------
# fcnseg checkpoints


def load_model_state(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    source_config: Mapping | None = None,
) -> list[str]:
    """Load a whole-model state dict; returns the keys dropped as num_classes-dependent.

    Tensors whose shapes differ only where the model has ``num_classes`` (score layers,
    upsampling deconvs and projections of the scores, seed's last layer) are dropped with
    a warning and keep their initialisation; anything else must match exactly."""
    target = model.state_dict()
    config = getattr(model, "config", {})
    k_new = config.get("num_classes")
    k_old = (source_config or {}).get("num_classes")
    head, rest = [], {}
    for k, v in state.items():
        t = target.get(k)
        if (
            t is not None
            and t.shape != v.shape
            and _depends_on_classes(t.shape, v.shape, k_new, k_old)
        ):
            head.append(k)
        else:
            rest[k] = v
    if head and k_old is None:
        k_old = next(v for k, v in state.items() if k in head).shape[
            0
        ]  # best guess for the message
    try:
        copy_strict({k: v for k, v in target.items() if k not in head}, rest, source=source)
    except WeightsError as e:
        diff = _config_diff(config, source_config)
        raise WeightsError(
            f"{e}{'; the checkpoint was built with ' + diff if diff else ''}"
        ) from None
    if head:
        warnings.warn(
            f"{source}: num_classes {k_old} -> {k_new}: dropped {len(head)} head tensors "
            f"({_short(head)}); they keep their initialisation, everything else was loaded",
            stacklevel=3,
        )
    diff = _config_diff(config, source_config, ignore=("num_classes",))
    if diff:
        warnings.warn(f"{source} was built with {diff}; loaded anyway (same tensors)", stacklevel=3)
    return head


def _depends_on_classes(
    new: torch.Size, old: torch.Size, k_new: int | None, k_old: int | None
) -> bool:
    if len(new) != len(old) or k_new is None:
        return False
    diff = [(a, b) for a, b in zip(new, old, strict=True) if a != b]
    return all(a == k_new and (k_old is None or b == k_old) for a, b in diff)


def _config_diff(config: Mapping, source: Mapping | None, ignore: tuple[str, ...] = ()) -> str:
    if not source:
        return ""
    diffs = [
        f"{k}={source.get(k)!r} (model: {config.get(k)!r})"
        for k in config
        if k not in ignore and k in source and source.get(k) != config.get(k)
    ]
    return ", ".join(diffs)


def _short(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------


def _legacy_numpy_globals() -> list:
    """The numpy objects that checkpoints written before fcnseg stored plain RNG states hold
    (the numpy RNG key as an ndarray; metric values as numpy scalars), under the names numpy
    1.x (``numpy.core``) and 2.x (``numpy._core``) pickle them with. Rebuilding an array or a
    scalar from its bytes runs no code; anything else stays refused."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    allowed: list = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    allowed += [t for t in vars(getattr(np, "dtypes", object)).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return allowed


def safe_torch_load(path: str | PathLike, *, what: str = "checkpoint", map_location="cpu") -> object:
    """``torch.load`` that executes nothing: tensors and plain Python data only
    (``weights_only=True``), plus the numpy arrays/scalars of older fcnseg checkpoints.

    A file whose unpickling would call or build anything else (a crafted pickle that runs a
    command, another tool's objects) raises ``WeightsError`` naming the file and the object;
    a missing, truncated or foreign file raises ``WeightsError`` too."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the refused callable/class as "GLOBAL module.name" in its message
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise WeightsError(
                f"cannot read {what} {path}: not a PyTorch file, or one holding data fcnseg never writes; "
                "pass a .pt file written by fcnseg (RUN/best.pt) or a torchvision state dict"
            ) from None
        raise WeightsError(
            f"refused to load {what} {path}: it holds {found.group(1)}, which fcnseg files never hold and whose "
            "loading could run code; use a checkpoint written by fcnseg (RUN/best.pt), or, only if you "
            "trust the file, re-save its tensors: torch.save(torch.load(FILE, weights_only=False)['model'], 'weights.pt')"
        ) from None
    except FileNotFoundError:
        raise WeightsError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{what} {path} is a folder; pass the .pt file (e.g. RUN/best.pt)") from None
    except PermissionError:
        raise WeightsError(f"cannot read {what} {path}: permission denied; make it readable (chmod u+r)") from None
    except Exception as e:  # truncated / not a torch file
        raise WeightsError(f"cannot read {what} {path}: {_first_sentence(e)}; the file is damaged (e.g. a copy cut short) or not a PyTorch file") from None


def _first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text.split(". ")[0] if text else type(e).__name__).rstrip(".")


def load_weights(model: nn.Module, weights: str | PathLike, *, progress: bool = True) -> None:
    """Load ``weights`` (``"imagenet"`` or a file, see the module doc) into ``model``.

    Raises ``WeightsError`` naming the URL or path at fault and how to fix it."""
    backbone_name = model.config["backbone"]
    if isinstance(weights, str) and weights in WEIGHTS.get(backbone_name, {}):
        entry = WEIGHTS[backbone_name][weights]
        state = fetch(entry["url"], progress=progress)
        load_backbone_state(model.backbone, state, source=entry["url"])
        return
    path = Path(weights)
    if weights == "imagenet" and not path.is_file():
        raise WeightsError(
            f"backbone {backbone_name!r} has no published ImageNet checkpoint; train it from "
            "scratch (weights: null) or choose a backbone that has one: "
            + ", ".join(k for k, v in WEIGHTS.items() if "imagenet" in v)
        )
    if not path.is_file():
        known = ", ".join(WEIGHTS.get(backbone_name, {})) or "none"
        raise WeightsError(
            f"weights {str(weights)!r}: no such file, and not a declared entry for backbone "
            f"{backbone_name!r} (declared: {known}); pass an existing .pt file or a declared name"
        )
    obj = safe_torch_load(path, what="weights file")
    if isinstance(obj, Mapping) and "model" in obj and "model_config" in obj:
        load_model_state(model, obj["model"], source=str(path), source_config=obj["model_config"])
    elif isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        if any(k.startswith("backbone.") for k in obj):
            load_model_state(model, obj, source=str(path))
        else:
            load_backbone_state(model.backbone, obj, source=str(path))
    else:
        raise WeightsError(
            f"{path} is neither a torchvision state dict nor an fcnseg checkpoint "
            "(a dict with 'model' and 'model_config')"
        )


def load_matching(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Copies every tensor of ``state`` whose name and shape match one of ``model``'s.
    Returns (loaded, left at their initialisation, unused names of ``state``)."""
    own = model.state_dict()
    loaded, left = [], []
    with torch.no_grad():
        for name, tensor in own.items():
            src = state.get(name)
            if src is not None and tuple(src.shape) == tuple(tensor.shape):
                tensor.copy_(src)
                loaded.append(name)
            else:
                left.append(name)
    unused = [k for k in state if k not in own or tuple(state[k].shape) != tuple(own[k].shape)]
    return loaded, left, unused
