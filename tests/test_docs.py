"""The documentation: the site builds strictly, the pages agree with the code, the README is short.

`mkdocs build --strict` fails on a broken link, a missing anchor, a page left out of the nav
or a hook error. The configuration page's table is generated from `DatabaseConfig` at build
time (scripts/docs_hooks.py); this checks the built page against the fields, and that every
setting any page names is a real one, so renaming or removing a field without the docs fails.
"""

import html
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mountaineer_db import DatabaseConfig
from tests.docs_code import commands_in, files_in, section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    return target


def test_every_page_is_built(site: Path) -> None:
    pages = sorted(path.stem for path in DOCS.glob("*.md"))
    for page in pages:
        built = site / "index.html" if page == "index" else site / page / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"


def _table_rows(page: str) -> list[list[str]]:
    """The body rows of the first table after the 'All settings' heading, as plain text cells."""
    start = page.index('id="all-settings"')
    table = page[page.index("<tbody>", start) : page.index("</tbody>", start)]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
        rows.append([" ".join(html.unescape(re.sub(r"<[^>]+>", "", cell)).split()) for cell in cells])
    return rows


def test_the_configuration_table_is_every_field_with_its_docstring(site: Path) -> None:
    rows = _table_rows((site / "configuration" / "index.html").read_text())
    fields = DatabaseConfig.model_fields
    assert [row[0].split(" ")[0] for row in rows] == list(fields), "the table and DatabaseConfig's fields differ"
    for row, (name, field) in zip(rows, fields.items(), strict=True):
        assert field.description, f"{name} has no docstring: document it where it is declared"
        assert row[3] == " ".join(field.description.split()).replace("`", ""), name
    by_name = {row[0].split(" ")[0]: row for row in rows}
    assert by_name["SQLALCHEMY_DATABASE_URI"][0] == "SQLALCHEMY_DATABASE_URI (or DATABASE_URL)"
    assert by_name["DATABASE_CONNECT_TIMEOUT"][1:3] == ["seconds", "5"]
    assert by_name["DATABASE_POOL_TYPE"][1:3] == ["NULL | FIXED_PROCESS", "NULL"]
    assert by_name["POSTGRES_PASSWORD"][1] == "secret"


SETTING = re.compile(r"\b(?:POSTGRES|DATABASE|MIGRATIONS|SQLALCHEMY)_[A-Z0-9_]*")


def test_every_setting_a_page_names_exists() -> None:
    """A renamed or removed field leaves no page (or the README) naming the old one."""
    aliases = {
        alias
        for field in DatabaseConfig.model_fields.values()
        for alias in getattr(field.validation_alias, "choices", [])
        if isinstance(alias, str)
    }
    names = set(DatabaseConfig.model_fields) | aliases  # DATABASE_URL, DATABASE_READ_YOUR_WRITES_SECRET
    assert "DATABASE_URL" in aliases
    unknown = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for mention in set(SETTING.findall(path.read_text())):
            # `DATABASE_POOL_*` and `POSTGRES_*` name a group of settings.
            known = any(name.startswith(mention) for name in names) if mention.endswith("_") else mention in names
            if not known:
                unknown.append(f"{path.relative_to(ROOT)}: {mention}")
    assert unknown == []


def test_the_readme_is_short() -> None:
    size = len(README.encode())
    assert size < 10_000, f"README.md is {size} bytes; keep it under 10 KB and move detail to docs/"


def test_the_readme_quickstart_is_the_getting_started_app() -> None:
    """Both show the same files; tests/test_getting_started.py builds and runs them."""
    quickstart = section(README, "## Quickstart")
    page = (DOCS / "getting-started.md").read_text()
    assert files_in(quickstart) == files_in(page)
    assert set(commands_in(quickstart)) <= set(commands_in(page))


def test_the_readme_names_the_two_commands() -> None:
    assert "`bash scripts/run_example.sh`" in README and "`bash scripts/test.sh`" in README
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")


def test_the_docs_tool_floor_is_what_the_lowest_run_installs() -> None:
    """mkdocs-material's floor in the dev extra is verified by the lowest run, which pins it."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    (declared,) = [Requirement(text) for text in dev if Requirement(text).name == "mkdocs-material"]
    (floor,) = [spec.version for spec in declared.specifier if spec.operator == ">="]
    pins = (ROOT / "constraints" / "lowest.txt").read_text()
    assert re.search(rf"^mkdocs-material=={re.escape(floor)}\b", pins, re.MULTILINE), pins


def _build_output(project: Path, out: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_building_the_packages_prints_no_license_deprecation(tmp_path: Path) -> None:
    """setuptools 77+ prints a long deprecation banner for a license table or license classifiers;
    pip shows it on every install. Ours and the example app's must build without it."""
    control = tmp_path / "control"
    (control / "control").mkdir(parents=True)
    (control / "control" / "__init__.py").write_text("")
    (control / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "control"\nversion = "0.1"\nlicense = {text = "MIT"}\n'
    )
    assert "`project.license` as a TOML table is deprecated" in _build_output(control, tmp_path / "out")

    # Built from copies: setuptools builds in the source tree (build/, *.egg-info).
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules", ".mountaineer*")
    package = tmp_path / "package"
    shutil.copytree(ROOT / "mountaineer_db", package / "mountaineer_db", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, package / name)
    example = shutil.copytree(ROOT / "example_app", tmp_path / "example_app", ignore=ignore)
    for project in (package, example):
        output = _build_output(project, tmp_path / "out")
        assert "deprecated" not in output.lower(), f"{project.name}:\n{output[-3000:]}"


def test_the_example_command_and_the_test_command_keep_their_own_virtualenvs() -> None:
    """Issue 25: run_example.sh used to make `.venv` with whatever python3 was (3.11), which
    test.sh then took for its newest-Python environment."""
    example = (ROOT / "scripts" / "run_example.sh").read_text()
    tests = (ROOT / "scripts" / "test.sh").read_text()
    assert 'venv="$root/.venv-example"' in example
    assert "make_venv .venv " in tests and "make_venv .venv-lowest " in tests
    assert ".venv-example" not in tests
    # and a .venv made by another Python is made again, not reused
    assert 'if [ -n "$have" ] && [ "$have" != "$wanted" ]; then' in tests
    assert ".venv-example/" in (ROOT / ".gitignore").read_text().splitlines()
