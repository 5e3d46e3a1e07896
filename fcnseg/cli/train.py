"""`fcnseg train`: a thin layer over `fcnseg.engine.train.train`.

Only the flags given on the command line override the config file (`--config`), which
overrides the TrainConfig defaults."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from fcnseg.cli.data import add_data_args
    from fcnseg.engine.config import CLASS_WEIGHTS

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
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="FILE", help="YAML config (keys as below, underscored)")
    g.add_argument("--out", metavar="DIR", help="run directory (default runs/<name or timestamp>)")
    g.add_argument("--name", help="run name under runs/")
    g.add_argument("--resume", nargs="?", const="auto", metavar="PATH", help="continue from a checkpoint (default OUT/last.pt)")
    g.add_argument("--seed", type=int)
    g.add_argument("--epochs", type=int, metavar="N")
    g.add_argument("--max-minutes", type=float, metavar="M", help="wall-clock budget, final validation (if any) included; the lr schedule fits it (0: none, e.g. to run a config's recipe for --epochs)")
    g.add_argument("--eval-every", type=int, metavar="N", help="validate every N epochs (0: never: the whole budget trains, best.pt is the final model; score it with `fcnseg eval`)")
    g.add_argument("--eval-tta", metavar="SPEC", help="test-time augmentation of validation (and the default of `fcnseg eval`/`predict` for this run), e.g. 'flip,scales=0.75,1,1.25'; 'none': off")
    g.add_argument("--eval-crf", metavar="SPEC", help="CRF refinement of validation (and the default of `fcnseg eval`/`predict` for this run): 'default' or key=value pairs, e.g. 'appearance=2,theta_b=5'; 'none': off")
    g.add_argument("--ckpt-every-steps", type=int, metavar="N", help="also write last.pt every N steps")
    g.add_argument("--skip-check", action="store_true", help="leave out the files the data check lists instead of stopping")
    g.add_argument("--train-split", metavar="S")
    g.add_argument("--val-split", metavar="S")
    g.add_argument("--val-data", metavar="NAME", help="validate on another dataset (default: --data)")
    g.add_argument("--val-data-root", metavar="DIR", help="its folder")
    g.add_argument("--workers", type=int, metavar="N", help="data loader processes")
    g.add_argument("--preload", action="store_true", help="decode the training pairs into memory once (small datasets)")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="fcn32s, fcn16s, fcn8s, fcn4s, fcn2s, fpn, seed")
    g.add_argument("--backbone", metavar="NAME", help="vgg16, vgg16_bn, resnet10, resnet18, ...")
    g.add_argument("--weights", metavar="imagenet|PATH", help="pretrained backbone weights")
    g.add_argument("--init-from", metavar="CKPT", help="copy the tensors whose name and shape match (staged FCN-32s → 16s → 8s)")
    g.add_argument("--freeze-backbone", action="store_true")
    g.add_argument("--freeze-schedule", nargs="+", metavar="F:NAME,NAME", help="late freezing: the named modules stop training after fraction F of the run (e.g. 0.5:backbone.conv1,backbone.bn1,backbone.layer1)")
    g.add_argument("--zero-init-residual", action="store_true", help="from scratch: start each ResNet block's residual branch at zero (its last BatchNorm scale 0)")
    g.add_argument("--upsample", metavar="MODE", help="deconv, bilinear, ...")
    g.add_argument("--align", metavar="MODE", help="same or paper")
    g.add_argument("--output-stride", type=int, metavar="S")
    g.add_argument("--context", choices=("ppm",), help="a context module on the backbone's last map before the FCN score layer: ppm (PSPNet's pyramid pooling)")
    g.add_argument("--aux-loss", type=float, metavar="W", help="weight of an auxiliary stride-16 loss (0: off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, metavar="B", help="per process")
    g.add_argument("--accum-steps", type=int, metavar="N", help="gradient accumulation")
    g.add_argument("--crop", type=int, nargs="+", metavar="PX", help="training crop: H [W]")
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="random rescaling of training images before the crop")
    g.add_argument("--area-for-downscale", action=argparse.BooleanOptionalAction, default=None, help="shrink frames for the random scale with INTER_AREA (the default; --no-area-for-downscale: bilinear, as the test-time views are, and cheaper)")
    g.add_argument("--color-jitter", type=float, metavar="S", help="brightness, contrast and saturation of training crops scaled by factors in [1 - S, 1 + S] (0: off)")
    g.add_argument("--balanced-crops", type=float, metavar="P", help="place a fraction P of the training crops around a pixel of a class drawn uniformly from the frame's classes (rare classes as often as common ones; 0: uniform crops)")
    g.add_argument("--copy-paste", type=float, metavar="P", help="class copy-paste: with probability P a training crop receives, at the same place, the --paste-classes pixels of another crop of its batch (0: off)")
    g.add_argument("--paste-classes", nargs="+", metavar="NAME", help="the classes --copy-paste moves, by name or index (default: those rarer than the median class)")
    g.add_argument("--paste-weights", action=argparse.BooleanOptionalAction, default=None, help="compute the median-frequency class weights on the masks as --copy-paste changes them (the pasted classes weigh less)")
    g.add_argument("--progressive", nargs="+", metavar="F:HxW:MIN-MAX", help="progressive resizing: train up to fraction F of the run on HxW crops of frames scaled MIN-MAX, then on --crop/--scale (e.g. 0.5:144x192:0.375-0.625)")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    g.add_argument("--lr", type=float, metavar="X")
    g.add_argument("--momentum", type=float, metavar="M")
    g.add_argument("--weight-decay", type=float, metavar="WD")
    g.add_argument("--schedule", choices=("poly", "cosine", "constant"))
    g.add_argument("--schedule-unit", choices=("step", "pixels"), help="what the lr schedule counts: steps, or steps weighted by their crop's pixels (with --progressive: follows wall time)")
    g.add_argument("--warmup-steps", type=int, metavar="N")
    g.add_argument("--clip-grad", type=float, metavar="NORM")
    g.add_argument("--class-weights", choices=CLASS_WEIGHTS)
    g.add_argument("--hard-pixels", type=float, metavar="F", help="average the loss over the hardest fraction F of each batch's pixels (bootstrapped cross-entropy; 1: all)")
    g.add_argument("--lovasz", type=float, metavar="W", help="add W x the Lovász-softmax loss (a mean-IU surrogate; Berman et al. 2018) to the cross-entropy (0: off)")
    g.add_argument("--ema", type=float, metavar="D", help="validate and save an exponential moving average of the weights with decay D per step (e.g. 0.999; 0: off)")
    g = p.add_argument_group("hardware")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"))
    g.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:1")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig keys given on the command line (nothing else)."""
    from fcnseg.cli.data import dataset_options
    from fcnseg.engine.config import FIELDS

    given = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    for key in ("data_option", "func", "verb"):
        given.pop(key, None)
    if getattr(args, "data_option", None):
        given["data_options"] = dataset_options(args)
    return given


def run(args: argparse.Namespace) -> int:
    from fcnseg.engine.train import train

    train(overrides_from_args(args), config_file=getattr(args, "config", None))
    return 0
