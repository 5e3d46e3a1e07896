"""`fcnseg train`: a thin layer over `fcnseg.training.train.train`.

The flags, their help, metavars and choices come from the fields of
`fcnseg.config.TrainConfig` (written once, there). Only the flags given on the command
line override the config file (`--config`), which overrides the TrainConfig defaults."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``), in the groups of
    the fields' metadata; a flag given sets its key, the others stay unset."""
    from fcnseg.config import FIELDS, GROUPS, TrainConfig

    groups = {name: p.add_argument_group(name) for name in GROUPS}
    groups["run"].add_argument("--config", metavar="FILE", help="YAML config (keys as the flags, underscored); flags override it")
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        group = groups[meta.pop("group")]
        kind = next((a for a in typing.get_args(FIELDS[f.name]) if a is not type(None)), FIELDS[f.name])
        kw = {k: v for k, v in meta.items() if v is not None}
        if kind is bool:
            # --x and --no-x for every switch: a plan or a config file may have turned it either way
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kw.setdefault("nargs", "+")
        elif kind in (int, float):
            kw["type"] = kind
        group.add_argument(flag, dest=f.name, **kw)


def register(subparsers) -> None:
    from fcnseg.cli.data import add_data_args

    p = subparsers.add_parser(
        "train",
        help="train a segmentation model (no arguments: a quick demo on synthetic data)",
        description="Train an FCN. With no arguments: FCN-8s/ResNet-18 on the built-in synthetic "
        "dataset, a couple of minutes on a laptop CPU. Flags override --config FILE (YAML with the "
        "same keys, underscored), which overrides the defaults. Multi-process: "
        "torchrun --nproc_per_node=K -m fcnseg train ...",
        argument_default=argparse.SUPPRESS,
    )
    add_data_args(p, required=False)
    p.set_defaults(data=None, data_root=None, data_option=[])
    add_config_flags(p)
    p.add_argument("--overwrite", action="store_true", default=False, help="train into --out (or --name) even if it holds a run: that run's files are replaced")
    p.add_argument("--no-plan", dest="no_plan", action="store_true", default=False,
                   help="real data without --config is planned from the data and this machine (`fcnseg plan`; "
                   "flags still win); --no-plan trains the plain defaults instead")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig keys given on the command line (nothing else)."""
    from fcnseg.cli.data import dataset_options
    from fcnseg.config import FIELDS

    given = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if getattr(args, "data_option", None):
        given["data_options"] = dataset_options(args)
    return given


def run(args: argparse.Namespace) -> int:
    import logging

    from fcnseg.training.train import train

    given = overrides_from_args(args)
    config_file = getattr(args, "config", None)
    planned = None
    # real data, no config file, not a resumed run: train the plan (the flags given win over it)
    if config_file is None and not args.no_plan and not given.get("resume") and given.get("data", "synthetic") != "synthetic":
        from fcnseg.errors import DataError
        from fcnseg.plan import describe, plan_for_train
        from fcnseg.training.distributed import env_dist_info

        try:
            planned, given = plan_for_train(given)
        except DataError as e:  # the trainer's data check reports it in full (or --skip-check leaves the files out)
            logging.getLogger("fcnseg.plan").warning("not planned: %s; training the defaults", e)
        if planned is not None and env_dist_info().is_main:
            logging.getLogger("fcnseg.plan").info("%s", describe(planned))
    train(given, config_file=config_file, plan=planned, overwrite=args.overwrite)
    return 0
