"""The documentation's figures: the transposed-convolution arithmetic the tutorial teaches, and
the cheap figures of docs/figures/make.py recomputed and compared with the committed numbers
(docs/figures/NAME.json; numbers, not PNG bytes)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"


def _load_make():
    spec = importlib.util.spec_from_file_location("docs_figures_make", FIGURES / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = _load_make()


@pytest.fixture
def one_thread():
    # tiny convolutions: a second thread only adds synchronisation (and contention on a
    # shared machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_transposed_conv_output_size_formula_matches_torch(one_thread):
    """o = (i-1)*s - 2p + k + output_padding, for every small combination torch accepts."""
    checked = 0
    for i in (1, 2, 5):
        for s in range(1, 4):
            for k in range(1, 6):
                for p in range(k):
                    for a in range(s):
                        o = make.transposed_output_size(i, s, p, k, a)
                        if o < 1:
                            continue
                        w = torch.zeros(1, 1, k, k)
                        out = torch.nn.functional.conv_transpose2d(torch.zeros(1, 1, i, i + 1), w, stride=s, padding=p, output_padding=a)
                        assert tuple(out.shape[-2:]) == (o, make.transposed_output_size(i + 1, s, p, k, a)), (i, s, k, p, a)
                        checked += 1
    assert checked > 150


def test_zero_insertion_recipe_equals_conv_transpose(one_thread):
    """Insert s-1 zeros, pad k-1-p (+ output_padding), slide the kernel rotated 180°:
    ConvTranspose2d's values, not only its size."""
    g = torch.Generator().manual_seed(0)
    for i, s, k, p, a in [(2, 1, 3, 0, 0), (2, 2, 3, 0, 0), (3, 2, 3, 1, 1), (4, 2, 4, 1, 0), (3, 3, 5, 2, 2), (5, 2, 2, 0, 1)]:
        x = torch.randn(i, i, generator=g, dtype=torch.float64)
        w = torch.randn(k, k, generator=g, dtype=torch.float64)
        got = make.transposed_conv_by_hand(x, w, stride=s, padding=p, output_padding=a)["out"]
        ref = torch.nn.functional.conv_transpose2d(x[None, None], w[None, None], stride=s, padding=p, output_padding=a)[0, 0]
        assert got.shape == ref.shape == (make.transposed_output_size(i, s, p, k, a),) * 2
        assert (got - ref).abs().max() <= 1e-12 * ref.abs().max(), (i, s, k, p, a)


def test_tutorial_examples_are_4x4_and_5x5():
    x = torch.tensor(make.TUTORIAL_MAP, dtype=torch.float64)
    k = torch.tensor(make.TUTORIAL_KERNEL, dtype=torch.float64)
    four = make.transposed_conv_by_hand(x, k, stride=1)
    five = make.transposed_conv_by_hand(x, k, stride=2)
    assert four["padded"].shape == (6, 6) and four["out"].shape == (4, 4)
    assert five["inserted"].shape == (3, 3) and five["padded"].shape == (7, 7) and five["out"].shape == (5, 5)
    # stride 2 stamps the kernel (x value) 2 pixels apart: the corners hold k[0, 0] * x
    assert five["out"][0, 0] == x[0, 0] * k[0, 0] and five["out"][-1, -1] == x[-1, -1] * k[-1, -1]


def _assert_matches(got, want, where: str, scale: float | None = None) -> None:
    """Equal structure; ints, bools and strings equal; floats within 1e-4 of the largest
    magnitude among their siblings (float32 sums differ between CPU kernels)."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in want:
            if key in ("source",) or "rel_diff" in key:
                continue
            _assert_matches(got[key], want[key], f"{where}.{key}")
        for key in want:
            if "rel_diff" in key:  # an fp32 round-off: small, never equal between CPUs
                assert got[key] < 1e-5, f"{where}.{key} = {got[key]}"
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        flat = [abs(v) for v in _floats(want)]
        sub = max(flat) if flat else None
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_matches(g, w, f"{where}[{n}]", sub if scale is None else scale)
    elif isinstance(want, float):
        tol = 1e-4 * max(abs(want), scale or 0.0, 1e-12)
        assert math.isclose(got, want, abs_tol=tol), f"{where}: {got} != {want} (tolerance {tol:.2g})"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _floats(v):
    if isinstance(v, float):
        yield v
    elif isinstance(v, list):
        for x in v:
            yield from _floats(x)


@pytest.mark.parametrize("name", make.CHEAP)
def test_cheap_figure_numbers_match_the_committed_ones(name, tmp_path):
    committed = json.loads((FIGURES / f"{name}.json").read_text())
    if committed.get("data") == "real" and make.pet_root(make.DEFAULT_DATA) is None:
        pytest.skip(f"{name} was drawn from ../shared/data/oxford-pet-mini, absent here")
    got = json.loads(json.dumps(make.MAKERS[name](tmp_path, make.DEFAULT_DATA, draw=False)))
    _assert_matches(got, committed, name)
    assert got.get("source") == committed.get("source")
    assert not list(tmp_path.iterdir())  # draw=False writes nothing


def test_every_figure_the_pages_show_is_committed():
    pages = list((REPO / "docs").glob("**/*.md"))
    shown = {m for page in pages for m in re.findall(r"figures/([\w.-]+\.png)\)", page.read_text())}
    assert shown, "no figure found in the pages"
    for png in shown:
        assert (FIGURES / png).is_file(), png
    for name in make.FIGURES:
        assert (FIGURES / f"{name}.json").is_file(), f"{name}.json: run python docs/figures/make.py --only {name}"
