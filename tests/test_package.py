"""The package's surface: the public names importable from `fcnseg`, loaded lazily, and a
`fcnseg --help` that does not import torch (the CLI's import cost is torch's, ~2-3 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fcnseg

ROOT = Path(fcnseg.__file__).resolve().parents[1]

# Runs in a fresh interpreter: `import fcnseg`, then `fcnseg --help` and every
# `fcnseg <verb> --help`, noting after each whether torch (or numpy) has been imported.
_PROBE = """
import contextlib, io, json, sys
import fcnseg
seen = {"import fcnseg": sorted(m for m in ("torch", "numpy") if m in sys.modules)}
from fcnseg.cli import VERBS, main
for argv in (["--help"], *([v, "--help"] for v in VERBS)):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main(argv)
    assert "usage: fcnseg" in out.getvalue(), argv
    seen["fcnseg " + " ".join(argv)] = sorted(m for m in ("torch", "numpy") if m in sys.modules)
print(json.dumps(seen))
"""


def test_help_does_not_import_torch():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert "fcnseg eval --help" in seen and "fcnseg train --help" in seen
    assert seen == {k: [] for k in seen}, seen


@pytest.mark.parametrize(
    "name, module",
    [
        ("build_model", "fcnseg.models"),
        ("list_models", "fcnseg.models"),
        ("train", "fcnseg.engine.train"),
        ("evaluate", "fcnseg.engine.evaluate"),
        ("evaluate_checkpoint", "fcnseg.engine.evaluate"),
        ("predict", "fcnseg.engine.predict"),
    ],
)
def test_public_functions_are_the_library_functions(name, module):
    import importlib

    assert name in fcnseg.__all__ and name in dir(fcnseg)
    assert getattr(fcnseg, name) is getattr(importlib.import_module(module), name)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        fcnseg.trian  # noqa: B018
