"""Models built by name: a plain dict registry filled by ``@register_model``.

(The model builders are being written; see fcnseg/models/*.py.)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fcnseg.errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return MODELS[name](**kwargs)
