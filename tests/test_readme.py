"""What the documentation promises about the tree, not its prose: docs/layout.md names every
module and package of both floors, and every relative link of README.md and docs/ resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def modules(package: str) -> list[str]:
    """Every module file (``gssl_fast/methods/simclr/losses.py``) and sub-package
    (``gssl_fast/methods/simclr/``) of ``package``, as repository paths; private names
    (``_x.py``, ``__pycache__``) and ``__init__.py`` (its package is named) left out."""
    found = []
    for path in sorted((ROOT / package).rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith("_") for part in parts):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            found.append("/".join(parts) + "/")
        elif path.suffix == ".py":
            found.append("/".join(parts))
    return found


def token(text: str) -> str:
    """A regex for ``text`` standing alone, not as the tail or head of a longer path."""
    return r"(?<![\w/.])" + re.escape(text) + r"(?![\w.])"


def named(path: str, lines: list[str]) -> bool:
    """``path`` appears whole on some line, or a line names its folder and its file name
    (a row such as ``gssl_fast/methods/fixmatch/: config.py, method.py``)."""
    if any(re.search(token(path), line) for line in lines):
        return True
    folder, _, name = path.rstrip("/").rpartition("/")
    return bool(name) and any(re.search(token(folder + "/"), line) and re.search(token(name), line) for line in lines)


def test_the_layout_names_every_module():
    lines = (ROOT / "docs" / "layout.md").read_text().splitlines()
    missing = [path for package in ("pipelines", "gssl_fast") for path in modules(package) if not named(path, lines)]
    assert not missing, f"docs/layout.md does not name: {missing}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", document.read_text())):
        base = anchor = slug(heading)
        n = 0
        while anchor in found:  # GitHub numbers a repeated heading: name, name-1, name-2
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def links(document: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", document.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in links(document):
        file, _, anchor = target.partition("#")
        goal = (document.parent / file).resolve() if file else document
        if not goal.exists():
            broken.append(f"{target} (no file {goal.relative_to(ROOT) if goal.is_relative_to(ROOT) else goal})")
        elif anchor and goal.suffix == ".md" and anchor not in anchors(goal):
            broken.append(f"{target} (no heading #{anchor} in {goal.relative_to(ROOT)})")
    assert not broken, f"{document.relative_to(ROOT)}: broken links {broken}"
