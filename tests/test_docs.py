"""The README and docs/ as a newcomer reads them: links resolve, the README stays short, documented commands exist.

Every relative link in README.md and docs/*.md must name an existing file (and, with `#anchor`, an existing heading
of a Markdown target, slugged as GitHub does); every `python -m jobs.X` written in a code block or code span must be
a module that answers `--help` with exit status 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
JOBS_COMMAND = re.compile(r"python3?\s+-m\s+jobs\.([A-Za-z_][A-Za-z0-9_]*)")


def _without_code(text: str) -> str:
    """Text with fenced blocks and code spans blanked (keeping line numbers), so only real links remain."""
    return CODE_SPAN.sub("``", _without_fences(text))


def _without_fences(text: str) -> str:
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _code(text: str) -> str:
    """Fenced blocks and code spans: where commands are written."""
    return "\n".join([m.group(0) for m in FENCE.finditer(text)] + CODE_SPAN.findall(_without_fences(text)))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lowercase, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(_without_fences(page.read_text())):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    text = _without_code(page.read_text())
    for lineno, line in enumerate(text.splitlines(), 1):
        for target in LINK.findall(line) + IMAGE.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / unquote(path)).resolve() if path else page
            where = f"{page.relative_to(root)}:{lineno}: ({target})"
            shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
            if not dest.exists():
                problems.append(f"{where} -> {shown} missing")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} -> no heading '#{anchor}' in {shown}")
    return problems


def documented_job_modules() -> dict[str, list[str]]:
    """jobs.X module name -> the pages whose code names `python -m jobs.X`."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for name in sorted(set(JOBS_COMMAND.findall(_code(page.read_text())))):
            found.setdefault(name, []).append(str(page.relative_to(ROOT)))
    return found


def test_pages_exist():
    assert (ROOT / "README.md").is_file() and len(PAGES) > 1, PAGES


def test_readme_is_a_front_door():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (limit {README_MAX_BYTES}): move the detail to docs/ and link it"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-heading-with-code) [web](https://example.com)\n"
        "`[not a link](nowhere.md)`\n"
        "[gone](missing.md)\n[bad anchor](other.md#nope)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "page.md:3: (missing.md)" in problems[0] and "no heading '#nope'" in problems[1]


def test_github_slugs():
    assert github_slug("Calibration (`python -m jobs.calibrate`)") == "calibration-python--m-jobscalibrate"
    assert github_slug("What `make demo` shows, and its score") == "what-make-demo-shows-and-its-score"
    assert (
        github_slug("Batched generation and cost per audio-hour")
        == "batched-generation-and-cost-per-audio-hour"
    )


MODULES = documented_job_modules()


def test_docs_name_the_main_entry_points():
    assert {"run", "demo"} <= set(MODULES), MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_documented_jobs_command_answers_help(module):
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (
        f"`python -m jobs.{module} --help` exited {proc.returncode} (named in {', '.join(MODULES[module])}):\n"
        f"{proc.stderr[-2000:]}"
    )
