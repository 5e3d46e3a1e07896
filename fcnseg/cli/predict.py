"""`fcnseg predict`: argument parsing over `fcnseg.predict` (in `fcnseg.inference.predict`),
which segments image files with a checkpoint.

Writes NAME.png (palette PNG of class indices at the input's size), NAME_overlay.jpg (the
image blended with the prediction, with a legend) and, with --probs, NAME_probs.npy (float16
softmax, (K, H, W)); inputs of the same stem get NAME, NAME-2, ... Arguments and outputs are
checked before any work (exit 2): an output that would replace an input is refused, outputs
already in --out need --skip-existing (resume) or --overwrite. An image that cannot be
decoded is skipped, the rest are written, the failures are listed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys

from fcnseg.cli.eval import add_inference_args, engine_check_kwargs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images: palette PNGs, overlays, optional probabilities",
        description="Segment image files, folders or globs with a checkpoint. Outputs per input "
        "NAME: NAME.png (class indices, palette PNG), NAME_overlay.jpg, NAME_probs.npy (--probs).",
    )
    add_inference_args(p, batch_size=4)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--probs", action="store_true", help="also save NAME_probs.npy (float16 (K, H, W))")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--skip-existing", action="store_true", help="keep the outputs already in --out and segment only the inputs without them (resumes a re-run)")
    again.add_argument("--overwrite", action="store_true", help="replace outputs already in --out (inputs are never replaced)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcnseg.inference.predict import PredictFailures, predict

    try:
        written = predict(
            args.checkpoint,
            args.inputs,
            args.out,
            batch_size=4 if args.batch_size is None else args.batch_size,
            alpha=args.alpha,
            save_probs=args.probs,
            device=args.device,
            precision=args.precision,
            tta="auto" if args.tta is None else args.tta,
            sliding_window=args.sliding_window,
            progress=sys.stderr.isatty(),
            crf="auto" if args.crf is None else args.crf,
            backend=args.backend,
            onnx_path=args.onnx,
            skip_existing=args.skip_existing,
            overwrite=args.overwrite,
            **engine_check_kwargs(args),
        )
    except PredictFailures as e:
        for _path, reason in e.failures:
            print(f"fcnseg predict: error: {reason}", file=sys.stderr)
        print(f"fcnseg predict: {e}", file=sys.stderr)
        return 1
    images = sum(1 for p in written if p.suffix == ".png")
    print(f"segmented {images} images into {args.out}")
    return 0
