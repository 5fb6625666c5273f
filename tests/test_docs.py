"""The documentation (issue 32): docs/ builds into a site with no warnings, every page is in
mkdocs.yml's nav, and the README stays short and links every page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

DOCS = REPO / "docs"
README_MAX_LINES = 210


def _pages() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md"))


def _nav_files(nav) -> list[str]:
    """The page files of a MkDocs nav (nested sections flattened)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_there_are_pages():
    assert {"index.md", "getting-started.md", "results.md", "glossary.md"} <= set(_pages())


@pytest.mark.subprocess
def test_docs_build_strict_without_warnings(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    for page in _pages():
        built = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
        assert (tmp_path / "site" / built).is_file(), built


def test_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]*)?\)", readme))
    missing = sorted(set(_pages()) - linked)
    assert not missing, f"README.md does not link docs/ pages: {missing}"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(config["nav"])
    assert sorted(set(nav) - set(_pages())) == [], "nav names pages that do not exist"
    assert sorted(set(_pages()) - set(nav)) == [], "docs/ pages missing from mkdocs.yml's nav"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
