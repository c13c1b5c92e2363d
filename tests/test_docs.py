"""The documentation stays in step with the code: every module named in docs/architecture.md, a short README that
keeps the two fresh-machine commands, no "issue N" in user-facing pages, and no relative link to a missing file.

Cheap (reads files only); no model, no imports of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "llm2comp"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
README_LIMIT = 12 * 1024  # bytes


def _modules() -> list[str]:
    """Every module under src/llm2comp, as its path relative to src/llm2comp. Package markers (`__init__.py`) are
    left out, except the package root's, which holds the public names; `__main__.py` is a module like any other."""
    paths = sorted(PACKAGE.rglob("*.py"))
    return [p.relative_to(PACKAGE).as_posix() for p in paths
            if "__pycache__" not in p.parts and (p.name != "__init__.py" or p.parent == PACKAGE)]


def _all_pages() -> list[Path]:
    """README.md, the pages of docs/ and the results index (not the output folders that scripts write under docs/)."""
    return [README, *sorted(DOCS.glob("*.md")), *sorted(DOCS.joinpath("results").glob("*.md"))]


def _listed_modules() -> list[str]:
    """The modules of docs/architecture.md's layout tables: the first column of a row, `path.py` in backticks."""
    return re.findall(r"^\| `([\w/]+\.py)` \|", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M)


def test_every_module_is_named_in_architecture():
    listed = set(_listed_modules())
    missing = [m for m in _modules() if m not in listed]
    assert not missing, (f"modules under src/llm2comp not in the layout of docs/architecture.md (add a row "
                         f"'| `path.py` | its job |' to its tables): {', '.join(missing)}")


def test_architecture_names_no_module_that_is_gone():
    listed = _listed_modules()
    existing = set(_modules()) | {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py")}
    gone = sorted(set(listed) - existing)
    assert not gone, f"docs/architecture.md lists modules that no longer exist under src/llm2comp: {gone}"
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"docs/architecture.md lists these modules twice: {twice}"


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail to a page under docs/"


def test_readme_keeps_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    for command in ("make quickstart", "make test"):
        assert any(re.match(rf"\s*{command}(\s|$)", line) for line in lines), f"README.md lost the line `{command}`"


@pytest.mark.parametrize("page", _all_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_issue_numbers_in_user_pages(page):
    hits = [line.strip() for line in page.read_text(encoding="utf-8").splitlines()
            if re.search(r"\bissues?\s*#?\d+", line, flags=re.I)]
    assert not hits, f"{page.relative_to(ROOT)} refers to issue numbers (say what, not which issue): {hits[:3]}"


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    targets = [a or b for a, b in _LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, flags=re.I) and not t.startswith("#")]


@pytest.mark.parametrize("page", _all_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(page):
    broken = []
    for target in _relative_links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_link_checker_sees_links():
    # the checks above would pass vacuously if the pattern found nothing
    assert "docs/architecture.md" in _relative_links(README)
    assert "quickstart.md" in _relative_links(DOCS / "results" / "README.md")
