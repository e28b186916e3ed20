"""The README is a first screen, and every link in it and in docs/ leads somewhere."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets, "the README links into docs/"
    for target in targets:
        assert (ROOT / target).exists(), target


def test_every_docs_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = {page for entry in config["nav"] for page in entry.values()}
    assert listed == {path.name for path in (ROOT / "docs").glob("*.md")}
