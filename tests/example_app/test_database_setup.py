"""The example app's database setup: migrations that match the models, and the embedded
development database started by the app's own lifespan (as `todo-app runserver` does)."""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mountaineer import config as mountaineer_config
from sqlalchemy import MetaData
from sqlmodel import SQLModel

from mountaineer_db import migrations
from mountaineer_db.servers.embedded import stop_embedded_database
from mountaineer_db.testing import ThrowawayDatabase
from tests.example_app._require import require_example_app

require_example_app()

from todo_app.app import build_app  # noqa: E402 - after the installed check
from todo_app.config import AppConfig  # noqa: E402
from todo_app.models import Todo  # noqa: E402


def todo_app_metadata() -> MetaData:
    """Only the app's tables: in this test process SQLModel.metadata also holds other test apps'."""
    metadata = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        if table is Todo.__table__:  # type: ignore[attr-defined]
            table.to_metadata(metadata)
    return metadata


TODO_APP_METADATA = todo_app_metadata()


async def test_committed_migrations_match_the_models(mdb_database: ThrowawayDatabase) -> None:
    """`migrate check` passes on a database made by the committed migrations."""
    only_this_app = f"{__name__}:TODO_APP_METADATA"
    await migrations.check(config=mdb_database.config(AppConfig, MIGRATIONS_METADATA=only_this_app))


@pytest.fixture
def project_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with the example's development settings, reachable by `nobody`."""
    root = Path(tempfile.mkdtemp(prefix="todo-app-embedded-"))
    os.chmod(root, 0o755)
    (root / ".env").write_text("ENVIRONMENT=development\nDATABASE_EMBEDDED=true\n")
    for name in ("SQLALCHEMY_DATABASE_URI", "DATABASE_URL", "POSTGRES_HOST", "POSTGRES_DB", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    yield root
    stop_embedded_database()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
async def test_lifespan_starts_the_embedded_database_with_migrations(project_dir: Path) -> None:
    controller = build_app(AppConfig())
    async with controller.app.router.lifespan_context(controller.app):
        registered = mountaineer_config.APP_CONFIG
        assert isinstance(registered, AppConfig)
        assert registered.database_url.port == int(
            (project_dir / ".mountaineer_db" / "data" / "postmaster.pid").read_text().splitlines()[3]
        )
        assert [r.id for r in await migrations.current(config=registered)] == [
            r.id for r in await migrations.history(config=registered) if r.is_head
        ]
        transport = httpx.ASGITransport(app=controller.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/internal/api/home_controller/add_todo", json={"description": "embedded"})
        assert response.status_code == 200, response.text
        assert [t["description"] for t in response.json()["sideeffect"]["todos"]] == ["embedded"]


@pytest.mark.slow
def test_the_apps_createdb_says_it_created_the_database(project_dir: Path) -> None:
    """`todo-app createdb` on a new development database: `Created`, not `Already exists` (#32 item 8)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("POSTGRES_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-c", "from todo_app.cli import cli; cli()", "createdb"],
        cwd=project_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Created database "todo_app" on 127.0.0.1:'), result.stdout
