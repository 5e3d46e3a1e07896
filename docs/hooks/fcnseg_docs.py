"""mkdocs hooks for fcnseg's site (``hooks:`` in mkdocs.yml).

* The CLI reference is generated at build time from ``fcnseg.cli.build_parser()``: the page
  ``reference/cli.md`` holds ``<!-- fcnseg-cli-help -->`` where every verb's (and
  sub-verb's) ``--help`` goes, so it can never be stale.
* API entries may name alternatives: ``::: fcnseg.train | fcnseg.training.train.train`` becomes
  ``::: <the first that imports>`` (a function that moves keeps its page); an entry with a
  trailing ``?`` (``::: fcnseg.evaluate_checkpoint ?``) is left out while it does not exist.
  Nothing that resolves is left out, and an entry none of whose names resolve fails the build.
* ``<!-- readme: Set up -->`` is replaced by that section of README.md (its heading
  dropped, its links rebased), so the site's set-up commands are README's, word for word.
* ``<!-- include: CHANGELOG.md -->`` is replaced by that repository file (links rebased).
* ``{{ fig.label_resize.keras_invented_pixels }}`` is replaced by that number from
  ``docs/figures/label_resize.json``: the text quotes what the figure shows
  (``{{ fig.downsampling.input | shape }}`` writes a list as ``3 x 333 x 500``).
* A line break between two Chinese characters is removed (a browser shows it as a space).
* Optional pages: nav entries listed in ``extra.optional_pages`` are dropped while their
  file does not exist (pages other parts of the project write: export, serving,
  reliability); the ``Experiments`` section lists every page under ``docs/experiments/``.
* Links from a page to a file of the repository outside ``docs/`` (``../configs/camvid.yaml``)
  become links to the repository (``repo_url``) or, without one, the path in code font; a
  link to a file that does not exist is left alone, so the strict build reports it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import posixpath
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

from mkdocs.exceptions import PluginError

CLI_MARKER = "<!-- fcnseg-cli-help -->"
README_MARKER = re.compile(r"<!-- readme: (?P<title>[^>]+?) -->")
INCLUDE_MARKER = re.compile(r"<!-- include: (?P<path>[^>]+?) -->")
FIG_VALUE = re.compile(r"\{\{\s*fig\.(?P<name>\w+)\.(?P<path>[\w.]+)\s*(?:\|\s*(?P<filter>shape)\s*)?\}\}")
# a line break between two CJK characters is no space in Chinese (the browser would show one)
CJK_BREAK = re.compile(r"(?<=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef])\n(?=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef])")
API_LINE = re.compile(r"^:::[ \t]+(?P<names>[^\n]+?)[ \t]*$", re.MULTILINE)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")
EXPERIMENTS = "Experiments"

_repo: Path | None = None


def on_config(config):
    global _repo
    _repo = Path(config["config_file_path"]).resolve().parent
    if str(_repo) not in sys.path:  # the checkout's fcnseg, also without an editable install
        sys.path.insert(0, str(_repo))
    docs = Path(config["docs_dir"])
    optional = set((config.get("extra") or {}).get("optional_pages") or [])
    config["nav"] = _prune(config.get("nav") or [], docs, optional)
    return config


def _exists(docs: Path, page: str) -> bool:
    return (docs / page).is_file()


def _prune(nav, docs: Path, optional: set[str]):
    """Drop missing optional pages, fill the Experiments section, drop empty sections."""
    out = []
    for item in nav:
        if isinstance(item, str):
            if item in optional and not _exists(docs, item):
                continue
            out.append(item)
            continue
        ((title, value),) = item.items()
        if title == EXPERIMENTS:
            value = _experiments(value or [], docs, optional)
        if isinstance(value, list):
            value = _prune(value, docs, optional)
            if value:
                out.append({title: value})
        elif isinstance(value, str) and value in optional and not _exists(docs, value):
            continue
        else:
            out.append({title: value})
    return out


def _experiments(listed, docs: Path, optional: set[str]):
    """The listed entries, then every other page under experiments/ (title from its first
    heading), so that notes added there appear without editing mkdocs.yml."""
    have = {v if isinstance(v, str) else next(iter(v.values())) for v in listed}
    extra = []
    pages = sorted((docs / "experiments").glob("**/*.md"), key=lambda p: (p.name != "index.md", p.as_posix()))
    for page in pages:
        rel = page.relative_to(docs).as_posix()
        if rel not in have:
            # the section's index.md is its landing page (navigation.indexes): no title
            extra.append(rel if page.name == "index.md" else {_title(page): rel})
    return list(listed) + extra


def _title(page: Path) -> str:
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem.replace("_", " ").replace("-", " ").capitalize()


# --------------------------------------------------------------------------- page content


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"])
    src_dir = (docs / page.file.src_uri).parent
    markdown = README_MARKER.sub(lambda m: readme_section(m.group("title"), src_dir), markdown)
    markdown = INCLUDE_MARKER.sub(lambda m: include_file(m.group("path").strip(), src_dir), markdown)
    markdown = FIG_VALUE.sub(lambda m: _fig_value(docs, m.group("name"), m.group("path"), m.group("filter")), markdown)
    markdown = _outside_code(markdown, lambda chunk: CJK_BREAK.sub("", chunk))
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    markdown = API_LINE.sub(_resolve_api, markdown)
    return _repo_links(markdown, page, config, files)


def readme_section(title: str, src_dir: Path) -> str:
    """The body of README.md's ``## title`` section, links rebased to the page's folder."""
    assert _repo is not None
    text = (_repo / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}[ \t]*\n(?P<body>.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if m is None:
        raise PluginError(f"README.md has no '## {title}' section (a docs page includes it)")

    def rebase(link: re.Match) -> str:
        target = link.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return link.group(0)
        path, sep, anchor = target.partition("#")
        rel = os.path.relpath(_repo / path, src_dir).replace(os.sep, "/")
        return f"[{link.group('text')}]({rel}{sep}{anchor})"

    return _outside_code(m.group("body").strip("\n"), lambda chunk: LINK.sub(rebase, chunk))


def include_file(path: str, src_dir: Path) -> str:
    """The whole of a repository file (``<!-- include: CHANGELOG.md -->``), links rebased to
    the page's folder, so the site shows the file itself rather than a copy."""
    assert _repo is not None
    file = _repo / path
    if not file.is_file():
        raise PluginError(f"<!-- include: {path} -->: no such file in the repository")
    text = file.read_text(encoding="utf-8").strip("\n")

    def rebase(link: re.Match) -> str:
        target = link.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return link.group(0)
        rel = os.path.relpath(file.parent / target, src_dir).replace(os.sep, "/")
        return f"[{link.group('text')}]({rel})"

    return _outside_code(text, lambda chunk: LINK.sub(rebase, chunk))


def _fig_value(docs: Path, name: str, path: str, filter: str | None = None) -> str:
    import json

    file = docs / "figures" / f"{name}.json"
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
    except (OSError, KeyError, IndexError, ValueError) as e:
        raise PluginError(f"{{{{ fig.{name}.{path} }}}}: not in {file} ({e!r}); run docs/figures/make.py") from e
    if filter == "shape":
        return " x ".join(str(v) for v in value)
    return _format(value)


def _format(value) -> str:
    """Numbers as a reader writes them: 1.0 -> 1, a matrix -> [[1, 2], [3, 4]], a mapping ->
    key: value pairs (``| shape`` in the page writes a list as 3 x 333 x 500)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        if abs(value) < 1e-2:
            return f"{value:.2g}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_item(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format_item(v)}" for k, v in value.items())
    return str(value)


def _format_item(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_format_item(v) for v in value) + "]"
    return _format(value)


def _resolve_api(match: re.Match) -> str:
    text = match.group("names").strip()
    optional = text.endswith("?")
    names = [n.strip() for n in text.rstrip("?").split("|") if n.strip()]
    for name in names:
        if _importable(name):
            return f"::: {name}"
    if optional:
        return ""
    raise PluginError(f"API reference: none of {names} can be imported; fix the ::: line")


def _importable(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _repo_links(markdown: str, page, config, files) -> str:
    if _repo is None:
        return markdown
    docs = Path(config["docs_dir"]).resolve()
    src_dir = (docs / page.file.src_uri).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def fix(m: re.Match) -> str:
        target = m.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        full = Path(os.path.normpath(src_dir / path))
        try:
            full.relative_to(docs)
            return m.group(0)  # inside docs/: mkdocs checks it
        except ValueError:
            pass
        try:
            rel = full.relative_to(_repo).as_posix()
        except ValueError:
            return m.group(0)
        if not full.exists():
            return m.group(0)  # a broken link: the strict build reports it
        if repo_url:
            kind = "tree" if full.is_dir() else "blob"
            return f"[{m.group('text')}]({repo_url}/{kind}/main/{posixpath.normpath(rel)}{'#' + anchor if anchor else ''})"
        text = m.group("text")
        return text if text.strip("`") == rel else f"{text} (`{rel}`)"

    return _outside_code(markdown, lambda chunk: LINK.sub(fix, chunk))


def _outside_code(markdown: str, fn) -> str:
    """Apply ``fn`` to the parts of ``markdown`` outside fenced code blocks."""
    parts = re.split(r"(^```.*?^```[^\n]*$)", markdown, flags=re.MULTILINE | re.DOTALL)
    return "".join(p if p.startswith("```") else fn(p) for p in parts)


# --------------------------------------------------------------------------- CLI reference


def cli_reference(width: int = 80) -> str:
    """Markdown: one section per verb (and sub-verb) with its ``--help`` text."""
    from fcnseg.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal's width
    try:
        parser = build_parser()
        blocks = [_section("fcnseg", parser, level=2)]
        for name, sub in _subparsers(parser):
            blocks.append(_section(f"fcnseg {name}", sub, level=2))
            for name2, sub2 in _subparsers(sub):
                blocks.append(_section(f"fcnseg {name} {name2}", sub2, level=3))
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n\n".join(blocks)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _section(title: str, parser: argparse.ArgumentParser, level: int) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        parser.print_help()
    text = buf.getvalue().rstrip().replace("```", "'''")
    return f"{'#' * level} `{title}`\n\n```text\n{text}\n```"
