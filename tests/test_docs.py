"""The documentation stays true to the repository: the generated configuration page is current, no file
points outside the repository, the README stays short, and every relative link resolves. No Ray."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = REPO
GENERATOR = ROOT / "docs" / "configuration.py"
CONFIGURATION_PAGE = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
README_MAX_LINES = 300
# Spelled in two pieces so that this file does not match itself.
OUTSIDE = "../" + "shared"


def linked_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def test_configuration_page_is_current() -> None:
    printed = subprocess.run(
        [sys.executable, str(GENERATOR)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert CONFIGURATION_PAGE.read_text(encoding="utf-8") == printed, (
        "docs/configuration.md is out of date: run `make docs` "
        "(.venv/bin/python docs/configuration.py > docs/configuration.md)"
    )


def test_configuration_page_covers_every_field() -> None:
    from serve_app import config

    page = CONFIGURATION_PAGE.read_text(encoding="utf-8")
    for model, path in [
        (config.ModelConfig, "args.model"),
        (config.LimitsConfig, "args.limits"),
        (config.AccessConfig, "args.access"),
        (config.TenantQuotas, "args.access.quotas"),
        (config.OpenAIRouteConfig, "args.openai"),
        (config.WebSocketConfig, "args.websocket"),
    ]:
        for name in model.model_fields:
            assert f"`{path}.{name}`" in page, f"{path}.{name} is not documented"


def test_no_file_points_outside_the_repository() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    found = subprocess.run(["git", "grep", "-n", "-F", OUTSIDE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert found.returncode in (0, 1), found.stderr
    assert found.stdout == "", f"tracked files point at {OUTSIDE}, outside the repository:\n{found.stdout}"
    for page in linked_pages():  # the pages themselves, tracked or not yet
        assert OUTSIDE not in page.read_text(encoding="utf-8"), f"{page.relative_to(ROOT)} points at {OUTSIDE}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    top = "\n".join(lines[:40])
    assert "make serve" in top and "make test" in top


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def relative_links(text: str) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = _LINK.findall(text) + _REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


@pytest.mark.parametrize("page", linked_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_link_finder() -> None:
    text = "[a](docs/api.md#x) ![p](img.png) [w](https://x.y) [s](#top) `[c](code.md)`\n```\n[f](fenced.md)\n```\n"
    assert relative_links(text) == ["docs/api.md#x", "img.png"]


# A repository path in a code span: a file under one of the project's folders, as the docs name them.
_PATH_IN_CODE = re.compile(r"`((?:serve_app|tests|benchmarks|configs|docker|docs)/[\w./-]+\.(?:py|sh|yaml|md|json))`")


@pytest.mark.parametrize("page", linked_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_files_the_docs_name_exist(page: Path) -> None:
    """A page that names `tests/...py` or `serve_app/...py` names a file that is there (modules move)."""
    named = _PATH_IN_CODE.findall(page.read_text())
    missing = sorted({path for path in named if not (ROOT / path).exists() and "*" not in path})
    assert not missing, missing
