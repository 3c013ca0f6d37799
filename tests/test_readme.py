"""The README's Quickstart, as written: its files make an app whose own tests (and ours) pass.

The files and the test code come from README.md itself, so the README cannot drift from
what works. The app runs in a subprocess with the project folder as its working directory,
so its `.env` (which names a developer database) is read as a user's would be; the test kit
must take over the connection anyway. The kit uses this suite's PostgreSQL.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.docs_code import commands_in, files_in, section, write_files

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICKSTART = section(README, "## Quickstart")

# Ours, added beside the README's tests: the table models of the re-render keep every field,
# and the test's own objects stay usable after a request.
EXTRA_TESTS = '''
from sqlmodel import select

from myapp.models import Todo


async def test_the_rerender_serializes_whole_rows(mdb_client, mdb_app_session):
    for description in ("milk", "eggs"):
        response = await mdb_client.post("/internal/api/home_controller/add_todo", json={"description": description})
        assert response.status_code == 200, response.text
    rows = response.json()["sideeffect"]["todos"]
    ids = (await mdb_app_session.exec(select(Todo.id).order_by(Todo.id))).all()
    assert rows == [{"id": ids[0], "description": "milk"}, {"id": ids[1], "description": "eggs"}]


async def test_objects_the_test_holds_survive_a_request(mdb_client, mdb_app_session):
    todo = Todo(description="bread")
    mdb_app_session.add(todo)
    await mdb_app_session.commit()
    response = await mdb_client.post("/internal/api/home_controller/add_todo", json={"description": "jam"})
    assert response.status_code == 200, response.text
    assert todo.description == "bread"
    await mdb_app_session.refresh(todo)
    assert todo.id is not None


def test_the_app_config_points_at_the_test_database(mdb_config, mdb_database):
    from mountaineer.config import get_config

    from myapp.config import AppConfig

    assert isinstance(get_config(), AppConfig) and get_config() is mdb_config
    assert mdb_config.database_url.database == mdb_database.name
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "myapp_project"
    files = files_in(QUICKSTART)
    write_files(files, root)
    (root / "tests" / "test_more.py").write_text(EXTRA_TESTS)
    return root


def test_the_quickstart_names_every_file_an_app_needs() -> None:
    files = files_in(QUICKSTART)
    expected = {
        "pyproject.toml",
        ".env",
        ".gitignore",
        "myapp/__init__.py",
        "myapp/config.py",
        "myapp/models.py",
        "myapp/controllers/__init__.py",
        "myapp/controllers/home.py",
        "myapp/app.py",
        "myapp/views/package.json",
        "myapp/views/app/home/page.tsx",
        "tests/conftest.py",
        "tests/test_home.py",
    }
    assert set(files) == expected
    commands = commands_in(QUICKSTART)
    assert 'pip install -e ".[test]"' in commands and "pytest" in commands and "mountaineer-dev" in commands


def test_the_quickstart_app_passes_its_own_tests_and_ours(project: Path, pg_server: Any, tmp_path: Path) -> None:
    # `pip install -e .`, as the README says, but into a folder of this test's own (no deps:
    # they are this suite's); Mountaineer finds the package's views through its metadata.
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "."],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POSTGRES_", "DATABASE_", "SQLALCHEMY_", "MIGRATIONS_", "PYTEST_"))
    }
    env["PYTHONPATH"] = str(site)
    env["MOUNTAINEER_DB_TEST_URL"] = pg_server.url("postgres").render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout, result.stdout[-2000:]
