"""The documentation site's hook (docs/hooks/fcnseg_docs.py) and page set: the CLI reference
covers every verb, optional pages drop out of the nav only while missing, and every English
tutorial page has its Chinese twin. (The full `mkdocs build --strict` runs in .ci/run.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("fcnseg_docs_hook", DOCS / "hooks" / "fcnseg_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _hook()


def test_cli_reference_has_every_verb_and_subverb():
    from fcnseg.cli import VERBS

    text = hook.cli_reference()
    for verb in VERBS:
        assert f"## `fcnseg {verb}`" in text
        assert f"usage: fcnseg {verb}" in text
    for sub in ("check", "download", "stats", "show"):
        assert f"### `fcnseg data {sub}`" in text
    assert "--config FILE" in text  # a train flag, from the real parser


def test_missing_optional_pages_leave_the_nav_and_required_ones_stay(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "here.md").write_text("# Here\n")
    (tmp_path / "experiments" / "camvid.md").write_text("# CamVid notes\n")
    nav = [
        {"Home": "here.md"},
        {"Guides": [{"Export": "deploy.md"}, {"Typo": "typo.md"}]},
        {"Only optional": [{"Serving": "serving.md"}]},
        {"Experiments": [{"Old place": "camvid.md"}]},
    ]
    got = hook._prune(nav, tmp_path, {"deploy.md", "serving.md", "camvid.md"})
    assert got == [
        {"Home": "here.md"},
        {"Guides": [{"Typo": "typo.md"}]},  # not optional: mkdocs reports it, strict fails
        {"Experiments": [{"CamVid notes": "experiments/camvid.md"}]},  # found under experiments/
    ]


def test_api_lines_resolve_to_the_first_importable_name():
    assert hook.API_LINE.sub(hook._resolve_api, "::: fcnseg.nope | fcnseg.build_model") == "::: fcnseg.build_model"
    assert hook.API_LINE.sub(hook._resolve_api, "::: fcnseg.does_not_exist ?") == ""
    with pytest.raises(Exception, match="none of"):
        hook.API_LINE.sub(hook._resolve_api, "::: fcnseg.does_not_exist")


def test_figure_values_are_formatted_as_a_reader_writes_them():
    assert hook._format([1, 2, 3]) == "[1, 2, 3]"
    assert hook._format([[1.0, 2.0], [3.0, 4.0]]) == "[[1, 2], [3, 4]]"
    assert hook._format(1.5e-8) == "1.5e-08"
    assert hook._format(0.5032053973013493) == "0.503"
    assert hook._format(1047.14) == "1047"
    assert hook._format(True) == "True"


def test_every_tutorial_page_has_a_chinese_twin_with_the_same_figures():
    import re

    english = sorted((DOCS / "tutorial").glob("*.md"))
    assert len(english) >= 7
    for page in english:
        twin = DOCS / "zh" / "tutorial" / page.name
        assert twin.is_file(), f"{twin.relative_to(REPO)} missing"
        figs = lambda p: sorted(re.findall(r"figures/([\w.-]+\.png)", p.read_text(encoding="utf-8")))  # noqa: E731
        assert figs(page) == figs(twin), page.name
        assert re.search(r"[\u4e00-\u9fff]", twin.read_text(encoding="utf-8")), f"{twin.name} has no Chinese"


def test_a_line_break_between_chinese_characters_is_removed_outside_code():
    text = "中文\n文字 and\nEnglish\n```\n代码\n代码\n```\n"
    got = hook._outside_code(text, lambda chunk: hook.CJK_BREAK.sub("", chunk))
    assert got == "中文文字 and\nEnglish\n```\n代码\n代码\n```\n"


def test_readme_sections_the_site_includes_exist():
    hook._repo = REPO
    for title in ("Set up", "Quick start", "Results"):
        assert hook.readme_section(title, DOCS).strip()
