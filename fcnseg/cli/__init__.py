"""`fcnseg <verb>`: a thin layer over the library. Each verb module exposes
`register(subparsers)`, which adds its parser and sets `func` to a function taking the
parsed arguments and returning an exit code. Heavy imports stay inside those functions so
`fcnseg --help` is quick."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings

from fcnseg import __version__
from fcnseg.errors import FcnsegError

# verb modules, in the order `fcnseg --help` lists them
VERBS = ("plan", "train", "eval", "predict", "export", "serve", "data", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg",
        description="Semantic segmentation with Fully Convolutional Networks.",
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"fcnseg.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"fcnseg.cli.{verb}":
                raise
            continue
        module.register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that a write in progress is undone (a
    checkpoint's temporary file removed) and the verb ends with one line."""


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated while a verb runs (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python_style = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        # fcnseg's own warnings (class names that differ, weights loaded partially) as one
        # line, like the errors; other libraries' the usual way
        if os.path.abspath(filename).startswith(package + os.sep):
            print(f"fcnseg {args.verb}: warning: {message}", file=sys.stderr)
        else:
            python_style(message, category, filename, lineno, file, line)

    try:
        # the server (uvicorn) handles SIGTERM itself: a graceful shutdown
        with warnings.catch_warnings(), (_sigterm_raises() if args.verb != "serve" else contextlib.nullcontext()):
            warnings.showwarning = show_warning
            return int(args.func(args) or 0)
    except FcnsegError as e:
        print(f"fcnseg {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a file the verb could not write or read that no closer check caught (a metrics
        # file, a plot): still one line naming it
        if not e.filename:
            raise
        import errno

        from fcnseg.checkpoint import write_error

        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            message = str(write_error(e.filename, e))
        else:
            message = f"cannot access {e.filename}: {e.strerror or e}; check that the path exists and its folder is writable"
        print(f"fcnseg {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcnseg {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"fcnseg {args.verb}: terminated (SIGTERM)", file=sys.stderr)
        return 143
