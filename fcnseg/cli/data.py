"""`fcnseg data check|download|stats|show`, and the dataset arguments every verb shares:
`add_data_args(parser)` adds `--data NAME`, `--data-root DIR` and the repeatable
`--data-option KEY=VALUE`; `dataset_options(args)` turns the latter into a dict."""

from __future__ import annotations

import argparse
import json

from fcnseg.errors import ConfigError


def add_data_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add `--data`, `--data-root` and `--data-option KEY=VALUE` (repeatable; the value is
    read as YAML, so `true`, `0.2`, `ignore`, `[32, 48]` become bool, float, str, list)."""
    parser.add_argument(
        "--data",
        required=required,
        metavar="NAME",
        help="dataset name, e.g. synthetic, camvid, oxford-pet, voc (an unknown name lists all)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        default=None,
        help="dataset folder (not needed for `synthetic`; default $FCNSEG_DATA/NAME)",
    )
    parser.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, repeatable, e.g. --data-option border=ignore "
        "--data-option val_fraction=0.2",
    )


def dataset_options(args: argparse.Namespace) -> dict:
    """`--data-option KEY=VALUE` strings -> {key: value}. Values are read as YAML (`true`,
    `0.2`, `[32, 48]`, `{membrane: 0, cell: 255}`); dashes in keys read as underscores; a
    later repeat of a key wins. ConfigError when an item has no `=` or bad YAML."""
    import yaml

    options: dict = {}
    for item in getattr(args, "data_option", None) or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"--data-option {item!r}: expected KEY=VALUE, e.g. --data-option border=ignore"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--data-option {item!r}: cannot read the value ({e})") from None
        options[key] = value
    return options


def build_from_args(args: argparse.Namespace, split: str, transforms=None):
    """`build_dataset(args.data, root=args.data_root, split=split, **options)`."""
    from fcnseg.data import build_dataset

    return build_dataset(
        args.data,
        root=args.data_root,
        split=split,
        transforms=transforms,
        **dataset_options(args),
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="check, download, summarise or preview a dataset",
        description="Dataset tools: check a folder, download a public dataset, print label "
        "statistics and class weights, draw samples with their masks.",
    )
    verbs = parser.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    p = verbs.add_parser(
        "check",
        help="list every problem in a dataset folder",
        description="Scan a dataset's files (missing partners, unreadable or truncated files, "
        "size mismatches, mask values outside the classes). Exit code 1 when problems are found.",
    )
    add_data_args(p)
    p.add_argument(
        "--split",
        nargs="+",
        action="extend",
        metavar="S",
        help="splits to check (default: all of the dataset's files)",
    )
    p.add_argument("--thorough", action="store_true", help="fully decode the images too (slower)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="threads (default: CPU count, at most 8)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="print at most N problems (the summary counts all)")  # fmt: skip
    p.set_defaults(func=_check)

    p = verbs.add_parser(
        "download",
        help="download, verify and extract oxford-pet, voc or sbd",
        description="Download with resume, verify the MD5 and extract; re-running is a no-op.",
    )
    p.add_argument("name", metavar="NAME", help="oxford-pet, voc or sbd")
    p.add_argument(
        "--root",
        "--data-root",
        dest="root",
        default=None,
        metavar="DIR",
        help="where to put it (default $FCNSEG_DATA/NAME, where datasets look by default)",
    )
    p.add_argument("--force", action="store_true", help="download and extract again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_download)

    p = verbs.add_parser(
        "stats",
        help="class pixel shares, image sizes and median-frequency weights",
        description="Per-class pixel percentage, images containing each class and "
        "median-frequency class weights (ignore excluded).",
    )
    add_data_args(p)
    p.add_argument("--split", default="train")
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="scan N images spread over the split (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=_stats)

    p = verbs.add_parser(
        "show",
        help="draw samples with their masks overlaid into a PNG",
        description="A grid of random samples (seeded) with the masks in the dataset's "
        "palette, ignored pixels in cream, and a legend of the classes present.",
    )
    add_data_args(p)
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--cols", type=int, default=4, help="grid columns (default 4)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.set_defaults(func=_show)


def _check(args: argparse.Namespace) -> int:
    from fcnseg.data.check import check_dataset, format_report

    problems = check_dataset(
        args.data,
        args.data_root,
        splits=args.split,
        workers=args.workers,
        thorough=args.thorough,
        **dataset_options(args),
    )
    print(format_report(problems, limit=args.limit))
    return 1 if problems else 0


def _download(args: argparse.Namespace) -> int:
    from fcnseg.data.download import download_dataset

    path = download_dataset(args.name, args.root, force=args.force, progress=not args.no_progress)
    print(f"{args.name}: ready; use --data {args.name} --data-root {path}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from fcnseg.data.stats import dataset_stats, format_stats

    dataset = build_from_args(args, args.split)
    stats = dataset_stats(dataset, max_images=args.max_images)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{args.data} / {args.split}")
        print(format_stats(stats))
    return 0


def _show(args: argparse.Namespace) -> int:
    from fcnseg.data.show import show_dataset

    dataset = build_from_args(args, args.split)
    out = show_dataset(
        dataset, args.out, n=args.n, cols=args.cols, alpha=args.alpha, seed=args.seed
    )
    print(f"wrote {out}")
    return 0
