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
        ("train", "fcnseg.training.train"),
        ("evaluate", "fcnseg.inference.evaluate"),
        ("evaluate_checkpoint", "fcnseg.inference.evaluate"),
        ("predict", "fcnseg.inference.predict"),
    ],
)
def test_public_functions_are_the_library_functions(name, module):
    import importlib

    assert name in fcnseg.__all__ and name in dir(fcnseg)
    assert getattr(fcnseg, name) is getattr(importlib.import_module(module), name)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        fcnseg.trian  # noqa: B018


# the loaders with known flaws below these versions (pyproject.toml says which)
FLOORS = {"torch": "2.6", "pillow": "10.3", "python-multipart": "0.0.18", "h11": "0.16"}


def test_dependency_floors_exclude_known_bad_loaders_and_are_met():
    """pyproject.toml's floors are at least FLOORS, and what is installed meets them."""
    import importlib.metadata
    import re

    from packaging.version import Version

    text = (ROOT / "pyproject.toml").read_text()
    for name, floor in FLOORS.items():
        found = re.search(rf'"{re.escape(name)}>=([0-9.]+)"', text)
        assert found, f"{name} has no floor in pyproject.toml"
        assert Version(found.group(1)) >= Version(floor), (name, found.group(1), floor)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert name in ("python-multipart", "h11"), name  # the serving extra may be absent
            continue
        assert Version(installed.split("+")[0]) >= Version(floor), f"{name} {installed} is below the floor {floor}"
