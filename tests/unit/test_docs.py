"""The docs: the site builds with --strict, every subpackage has its API page, links resolve,
and the README stays a front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "driftloop"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200

# [text](target) or [text](target "title"); images too (the leading ! does not matter).
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def subpackages() -> list[str]:
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def public_modules(package: str) -> list[str]:
    """The modules and subpackages of one subpackage that its API page must show (not private)."""
    folder = PACKAGE / package
    names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    names += [p.parent.name for p in folder.glob("*/__init__.py")]
    return sorted(n for n in names if not n.startswith("_"))


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside fenced code blocks."""
    found, in_fence = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        prose = re.sub(r"`[^`]*`", "", line)  # a link inside inline code is an example, not a link
        found += [(number, m.group(1)) for m in _LINK.finditer(prose)]
    return found


def heading_ids(path: Path) -> set[str]:
    """The anchors Python-Markdown's toc extension gives the headings of a Markdown file."""
    ids, in_fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = unicodedata.normalize("NFKD", m.group(1).replace("`", "")).encode("ascii", "ignore").decode()
            slug = re.sub(r"[^\w\s-]", "", text).strip().lower()
            ids.add(re.sub(r"[-\s]+", "-", slug))
    return ids


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """The site built exactly as `make docs` builds it, into a temporary folder, and the modules
    each subpackage had when the build started (others may add modules while it runs)."""
    modules = {package: public_modules(package) for package in subpackages()}
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), f"{mkdocs} is missing: mkdocs is in the test extra (requirements.lock)"
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, f"mkdocs build printed warnings:\n{log}"
    return out, modules


def test_every_subpackage_has_a_reference_page():
    for package in subpackages():
        page = DOCS / "reference" / f"{package}.md"
        assert page.exists(), f"no API page for driftloop.{package}: add {page.relative_to(ROOT)} and a nav entry"
        assert f"::: driftloop.{package}" in page.read_text(encoding="utf-8"), page


def test_the_site_builds_strictly_with_an_api_page_per_subpackage(site: tuple[Path, dict[str, list[str]]]):
    out, modules = site
    assert (out / "index.html").exists()
    assert (out / "architecture" / "index.html").exists()
    assert len(modules) >= 12, sorted(modules)
    for package, names in modules.items():
        html = out / "reference" / package / "index.html"
        assert html.exists(), f"no API page built for driftloop.{package}"
        text = html.read_text(encoding="utf-8")
        missing = [m for m in names if f'id="driftloop.{package}.{m}"' not in text]
        assert not missing, f"driftloop.{package}'s API page lacks {missing}"


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for path in markdown_files():
        for number, target in links(path):
            if _SCHEME.match(target) or target.startswith("#"):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve()
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            # mkdocs --strict checks anchors inside docs/; the README's are checked here.
            elif path == README and anchor and resolved.suffix == ".md" and anchor not in heading_ids(resolved):
                broken.append(f"{where} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_links_are_found():
    # A guard on the link test itself: the README does link into docs/.
    assert any(t.startswith("docs/architecture.md") for _, t in links(README))


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail into docs/"
    )
