"""Planning a training run from the data and the machine: ``fcnseg plan`` and planned ``fcnseg train``.

    plan = fcnseg.plan("folder", "data/em", {"classes": {"membrane": 0, "cell": 255}}, max_minutes=10)
    print(plan.summary())            # one reason per choice
    fcnseg.train(plan.config)        # or plan.yaml -> `fcnseg train --config plan.yaml`

``fingerprint`` scans the dataset once (cached beside the data), ``probe`` times the training
step on this machine (cached per machine), ``planner`` turns both and the budget into
TrainConfig keys (pure rules).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import types

from fcnseg.plan.planner import Plan, apply_given, plan_config

log = logging.getLogger("fcnseg.plan")

# the share of the budget the planner may spend measuring this machine
PROBE_SHARE = 0.03


def plan(
    data: str,
    data_root: str | os.PathLike | None = None,
    data_options: dict | None = None,
    *,
    max_minutes: float,
    given: dict | None = None,
    train_split: str = "train",
    val_split: str = "val",
    device: str = "auto",
    precision: str = "auto",
) -> Plan:
    """The planned TrainConfig keys (``Plan.config``) for ``data`` in ``max_minutes`` on this
    machine, with one reason per choice (``Plan.reasons``); ``given`` options win over the plan.
    ``Plan.estimate["planner_s"]`` is what planning cost (fingerprint and probe, each cached)."""
    from fcnseg.errors import ConfigError
    from fcnseg.plan.fingerprint import fingerprint
    from fcnseg.plan.probe import probe

    if not max_minutes or max_minutes <= 0:
        raise ConfigError(f"max_minutes must be > 0 to plan a run, got {max_minutes}")
    t0 = time.perf_counter()
    fp = fingerprint(data, data_root, data_options or {}, split=train_split, val_split=val_split)
    t1 = time.perf_counter()
    pr = probe(device=device, precision=precision, max_seconds=PROBE_SHARE * 60 * max_minutes)
    t2 = time.perf_counter()
    workers = 2 if (os.cpu_count() or 1) >= 2 else 0
    result = plan_config(fp, pr, max_minutes, workers=workers)
    if train_split != "train":
        result.config["train_split"] = train_split
    result.fingerprint, result.probe = fp, pr
    result = apply_given(result, given or {})
    result.estimate.update({"fingerprint_s": t1 - t0, "probe_s": t2 - t1, "planner_s": time.perf_counter() - t0})
    return result


def plan_for_train(given: dict) -> tuple[Plan, dict]:
    """``fcnseg train`` without a config on real data: the plan for the options ``given``
    (they win), and the options to train with. The budget planned for is ``max_minutes``, else
    the default's; ``epochs`` given without ``max_minutes`` still lifts the budget."""
    from fcnseg.config import DEFAULT_MINUTES

    minutes = given.get("max_minutes") or DEFAULT_MINUTES
    result = plan(
        given["data"], given.get("data_root"), given.get("data_options") or {}, max_minutes=minutes, given=given,
        train_split=given.get("train_split", "train"), val_split=given.get("val_split", "val"),
        device=given.get("device", "auto"), precision=given.get("precision", "auto"),
    )
    options = dict(result.config)
    if "epochs" in given and "max_minutes" not in given:
        options.pop("max_minutes", None)
    return result, options


def describe(result: Plan) -> str:
    """The fingerprint, the probe and the plan, as `fcnseg plan` prints them."""
    from fcnseg.plan.fingerprint import format_fingerprint
    from fcnseg.plan.probe import format_probe

    e = result.estimate
    return "\n".join([
        format_fingerprint(result.fingerprint),
        format_probe(result.probe),
        f"plan for {result.config['max_minutes']:g} minutes (planning took {e['planner_s']:.1f}s: "
        f"{100 * e['planner_s'] / (60 * result.config['max_minutes']):.1f} % of the budget):",
        result.summary(),
    ])


__all__ = ["Plan", "apply_given", "describe", "plan", "plan_config", "plan_for_train"]


class _CallableModule(types.ModuleType):
    """``fcnseg.plan`` is both this package and the library function (``fcnseg.plan(...)``):
    importing the package makes it the attribute ``fcnseg.plan``, so the package calls ``plan``."""

    def __call__(self, *args, **kwargs) -> Plan:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
