"""`fcnseg plan`: a thin layer over `fcnseg.plan.plan`: the dataset's fingerprint, this
machine's step cost and the planned training config, one reason per choice; `--out FILE`
writes the config for `fcnseg train --config FILE`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from fcnseg.cli.data import add_data_args

    p = subparsers.add_parser(
        "plan",
        help="plan a training run from the data and this machine (a config for `fcnseg train --config`)",
        description="Scan the dataset (a fingerprint, cached beside the data), time the training step on "
        "this machine (cached per machine) and print the planned training config with one reason per "
        "choice; --out writes it as YAML for `fcnseg train --config`.",
    )
    add_data_args(p)
    p.add_argument("--max-minutes", type=float, default=None, metavar="M", help="the training budget in minutes (default: the `fcnseg train` default, 3)")
    p.add_argument("--train-split", default="train", metavar="S", help="the split to train on (default train)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the plan as a config file (YAML with a reason per key)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.cli.data import dataset_options
    from fcnseg.config import DEFAULT_MINUTES
    from fcnseg.errors import ConfigError
    from fcnseg.plan import describe, plan

    if args.data == "synthetic":
        raise ConfigError("the synthetic demo needs no plan: `fcnseg train` runs it; plan a real dataset (--data folder --data-root DIR, camvid, oxford-pet, ...)")
    minutes = DEFAULT_MINUTES if args.max_minutes is None else args.max_minutes
    result = plan(args.data, args.data_root, dataset_options(args), max_minutes=minutes, train_split=args.train_split)
    print(describe(result))
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(result.yaml())
        except OSError as e:
            raise ConfigError(f"cannot write the plan to {out}: {e.strerror}") from None
        print(f"wrote {out}: fcnseg train --config {out}")
    return 0
