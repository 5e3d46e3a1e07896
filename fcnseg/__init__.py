"""fcnseg: Fully Convolutional Networks for semantic segmentation.

The library's entry points, importable from the package::

    import fcnseg

    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=21)
    plan = fcnseg.plan("folder", "my-data", max_minutes=10)               # plan.config, plan.summary()
    run = fcnseg.train({"data": "camvid", "data_root": "data/camvid"})   # -> run directory (planned)
    scores = fcnseg.evaluate_checkpoint(run / "best.pt")                   # what `fcnseg eval --json` prints
    fcnseg.predict(run / "best.pt", ["photo.jpg"], "preds/")              # what `fcnseg predict` writes
    scores = fcnseg.evaluate(model, dataset, mean=..., std=...)           # any model, any dataset

They are loaded on first use (PEP 562), so ``import fcnseg`` (and ``fcnseg --help``) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "build_model": "fcnseg.models",
    "list_models": "fcnseg.models",
    "train": "fcnseg.training.train",
    "plan": "fcnseg.plan",  # the package is callable: fcnseg.plan(...) plans
    "evaluate": "fcnseg.inference.evaluate",
    "evaluate_checkpoint": "fcnseg.inference.evaluate",
    "predict": "fcnseg.inference.predict",
}

__all__ = [
    "__version__",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "list_models",
    "plan",
    "predict",
    "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads them
    from fcnseg.inference.evaluate import evaluate, evaluate_checkpoint
    from fcnseg.inference.predict import predict
    from fcnseg.models import build_model, list_models
    from fcnseg.plan import plan
    from fcnseg.training.train import train


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
