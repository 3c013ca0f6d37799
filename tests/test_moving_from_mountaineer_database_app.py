"""docs/moving-from-mountaineer-database.md followed in order on the app `create-mountaineer-app`
generated in the 0.8 era (tests/sample_apps/old_template_app), as its owner would.

The development database is the embedded one (`DATABASE_EMBEDDED=true`); this test process
holds it open as a running development server would, so the commands reuse it. A production
database is made on the kit's server with the DDL mountaineer 0.8 ran (`create_all` without a
naming convention: SERIAL keys named `<table>_pkey`, plus the old tool's `migration_info`).
Every command the page has a user run runs as a subprocess; the page's files and commands are
taken from the page itself.
"""

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mountaineer_db import DatabaseConfig
from mountaineer_db.servers.embedded import ensure_embedded_database, stop_embedded_database
from tests.docs_code import FENCE, files_in, write_files
from tests.sample_apps import fresh_database, old_template_schema, server_execute, server_fetch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "moving-from-mountaineer-database.md").read_text()
PROSE = " ".join(PAGE.split())
OLD_APP = Path(__file__).parent / "sample_apps" / "old_template_app"

REQUEST = """
import asyncio, json, logging, sys
import httpx
from myapp.app import controller
from mountaineer_db import database_lifespan

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

async def new_detail():
    transport = httpx.ASGITransport(app=controller.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://myapp") as client:
        response = await client.post("/internal/api/home_controller/new_detail", json={})
    print(json.dumps({"status": response.status_code, "body": response.json()}))

async def main():
    if sys.argv[1:] == ["--lifespan"]:  # the app as the page's "better" form has it
        async with database_lifespan(controller.app):
            await new_detail()
    else:  # the old template's app.py: no lifespan at all
        await new_detail()

asyncio.run(main())
"""


def _bash_blocks(markdown: str) -> list[list[str]]:
    """The commands of each bash block that does not name a file, comments stripped."""
    blocks = []
    for block in FENCE.finditer(markdown):
        lines = block.group("body").splitlines()
        if block.group("lang") == "bash" and lines and not lines[0].startswith("# ."):
            commands = [line.split("  #", 1)[0].strip() for line in lines]
            blocks.append([line for line in commands if line and not line.startswith("#")])
    return blocks


class Project:
    """The old app in a folder of its own, and a way to run what its owner runs there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("POSTGRES_", "DATABASE_", "SQLALCHEMY_", "MIGRATIONS_", "MOUNTAINEER_DB_"))
        }
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"

    def run(self, argv: list[str], extra: dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            argv,
            cwd=self.root,
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def shell(self, line: str, **substitutions: str) -> "subprocess.CompletedProcess[str]":
        """One line of the page's bash blocks: `export`, `VAR=value ... mountaineer-db ...`."""
        words = shlex.split(line)
        for placeholder, value in substitutions.items():  # after splitting: the kit's password has a space
            words = [word.replace(placeholder, value) for word in words]
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            self.env[key] = value
            return subprocess.CompletedProcess(words, 0, "", "")
        extra = {}
        while "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            extra[key] = value
        assert words[0] == "mountaineer-db", line
        return self.run([sys.executable, "-m", "mountaineer_db.cli", *words[1:]], extra)

    def python(self, code: str, *args: str) -> "subprocess.CompletedProcess[str]":
        return self.run([sys.executable, "-c", textwrap.dedent(code), *args])


def _ok(result: "subprocess.CompletedProcess[str]") -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _failed(result: "subprocess.CompletedProcess[str]") -> str:
    assert result.returncode != 0, f"{result.args} succeeded:\n{result.stdout[-3000:]}"
    return " ".join(result.stderr.split())


@pytest.fixture
def project() -> Iterator[Project]:
    """The old app, in a folder the unprivileged PostgreSQL user can reach."""
    root = Path(tempfile.mkdtemp(prefix="mdb-old-app-"))
    os.chmod(root, 0o755)
    shutil.copytree(
        OLD_APP, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md", "*.sql", "__pycache__")
    )
    # As `pip install -e .` leaves it for Mountaineer, which finds PACKAGE through its distribution.
    dist_info = root / "myapp-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: myapp\nVersion: 0.1.0\n")
    (dist_info / "RECORD").write_text("myapp/__init__.py,,\n")
    try:
        yield Project(root)
    finally:
        stop_embedded_database(root / ".mountaineer_db")
        shutil.rmtree(root, ignore_errors=True)


def _hold_the_development_database(project: Project) -> DatabaseConfig:
    """Start the project's embedded server here, as `mountaineer-dev` would keep it running."""
    config = DatabaseConfig.model_construct(DATABASE_EMBEDDED=True, POSTGRES_DB="postgres")
    folder = project.root / ".mountaineer_db"
    return ensure_embedded_database(config, directory=folder, apply_migrations=False, create_database=False)


async def _fetch(config: DatabaseConfig, database: str, query: str) -> list[Any]:
    """Rows of `query` on `database` of the development server, as its superuser."""
    url = config.database_url
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=database, ssl=False
    )
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def _constraint_names(server: Any, database: str) -> list[str]:
    rows = await server_fetch(
        server,
        "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
        "AND conrelid::regclass::text NOT IN ('alembic_version', 'migration_info') "
        "UNION SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname <> 'alembic_version_pkc' "
        "ORDER BY 1",
        database=database,
    )
    return [row[0] for row in rows]


@pytest.mark.timeout(900)  # some twenty steps, each a process of its own: minutes on a loaded machine
def test_the_page_moves_the_old_template_app(project: Project, pg_server: Any) -> None:
    files = files_in(PAGE)
    assert set(files) >= {"myapp/cli.py", "myapp/models/__init__.py", ".env", ".gitignore"}

    # The old cli.py takes runserver and build down with it (the page's "The app's cli.py").
    spec = importlib.util.spec_from_file_location("old_template_cli", project.root / "myapp" / "cli.py")
    assert spec is not None and spec.loader is not None
    with pytest.raises(ModuleNotFoundError, match=r"^No module named 'mountaineer.database'$"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "`No module named 'mountaineer.database'`" in PROSE

    # -- The development database ----------------------------------------------------------
    # DATABASE_EMBEDDED=true added to the old .env: refused, naming the line to delete (#32 item 1).
    with open(project.root / ".env", "a") as dotenv:
        dotenv.write("DATABASE_EMBEDDED=true\n")
    write_files({"myapp/cli.py": files["myapp/cli.py"]}, project.root)
    write_files({name: text for name, text in files.items() if name.startswith("myapp/models/")}, project.root)
    refused = _failed(project.python("from myapp.cli import createdb; createdb()"))
    quoted = (
        "DATABASE_EMBEDDED (from the file .env) is true, but the config also names a database: "
        "POSTGRES_HOST (from the file .env)."
    )
    assert quoted in refused and quoted in PROSE
    assert "mysecretpassword" not in refused

    write_files({".env": files[".env"], ".gitignore": files[".gitignore"]}, project.root)
    assert ".mountaineer_db/" in (project.root / ".gitignore").read_text().splitlines()  # item 8
    held = _hold_the_development_database(project)

    # The app's own createdb (the page's cli.py): starts nothing itself but finds the development
    # database running, and says truthfully that it created the database (#32 items 2, 8).
    created = _ok(project.python("from myapp.cli import createdb; createdb()"))
    assert created.splitlines() == [
        "Created the database.",
        "Created the tables the models have and the database lacked.",
    ]
    tables = asyncio.run(_fetch(held, "myapp", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    assert sorted(row[0] for row in tables) == ["detailitem", "owner", "todo"]

    # No database_lifespan in the old app.py: the first request starts the development database
    # itself (#32 item 3), and the old tool's migrations folder (no env.py) is left alone.
    assert (project.root / "myapp" / "migrations" / "rev_1715044020.py").exists()
    answer = json.loads(_ok(project.python(REQUEST)).splitlines()[-1])
    assert answer["status"] == 200, answer
    assert [item["description"] for item in answer["body"]["sideeffect"]["items"]] == ["Untitled Item"]

    # -- Migrations: steps 3 to 6 on the development database -----------------------------
    shutil.rmtree(project.root / "myapp" / "migrations")  # step 3: git rm -r myapp/migrations
    baseline_block, stamp_block = [block for block in _bash_blocks(PAGE) if any("mountaineer-db" in c for c in block)]
    revision = None
    for line in baseline_block:
        output = _ok(project.shell(line))
        if line.endswith("createdb"):  # the baseline database did not exist: it says so (#25 item 3)
            assert output.startswith('Created database "myapp_baseline"'), output
        if "generate" in line:
            found = re.search(r"\((\w{12})\)", output)
            assert found, output
            revision = found.group(1)
            assert f"adopted instead: mountaineer-db migrate stamp {revision}" in output  # #25 item 4
    assert revision is not None
    databases = asyncio.run(_fetch(held, "postgres", "SELECT datname FROM pg_database"))
    assert "myapp_baseline" not in [row[0] for row in databases], "the page's steps left the baseline database"

    # Doing what generate's first line says, on a database that has the tables: one line saying to stamp.
    applied = _failed(project.shell("mountaineer-db migrate apply"))
    assert 'relation "detailitem" already exists' in applied, applied
    assert f"adopt it with `mountaineer-db migrate stamp {revision}`" in applied
    assert '`relation "detailitem" already exists`' in PROSE

    # The development server reloads on the new revision: its lifespan must not apply it here (#32 item 5).
    reloaded = project.python(REQUEST, "--lifespan")
    answer = json.loads(_ok(reloaded).splitlines()[-1])
    assert answer["status"] == 200, answer
    stderr = " ".join(reloaded.stderr.split())
    assert "A migration failed" not in stderr
    assert (
        "Development database: The database has tables of the models (detailitem, owner, todo) but records no "
        f"migration, so its migrations were not applied: adopt it with `mountaineer-db migrate stamp {revision}`"
    ) in stderr
    versions = asyncio.run(_fetch(held, "myapp", "SELECT to_regclass('alembic_version')::text"))
    assert versions[0][0] is None, "the lifespan recorded a migration it did not run"

    development_stamp, production_stamp = stamp_block
    _ok(project.shell(development_stamp, BASELINE_REVISION=revision))
    _ok(project.shell("mountaineer-db migrate check"))

    # -- Steps 5 and 6 on a production database made by mountaineer 0.8 -------------------
    with fresh_database(pg_server, prefix="mdb_old") as old_database:
        asyncio.run(server_execute(pg_server, *old_template_schema(), database=old_database))
        old_names = asyncio.run(_constraint_names(pg_server, old_database))
        assert {"detailitem_pkey", "owner_email_key", "todo_owner_id_fkey", "ix_todo_description"} <= set(old_names)
        url = pg_server.url(old_database).set(drivername="postgresql").render_as_string(hide_password=False)
        _ok(
            project.shell(
                production_stamp, BASELINE_REVISION=revision, **{"postgresql://USER:PASSWORD@HOST/DBNAME": url}
            )
        )
        production = {"DATABASE_EMBEDDED": "false", "DATABASE_URL": url}
        check = [sys.executable, "-m", "mountaineer_db.cli", "migrate", "check"]
        leftover = project.run(check, production)
        assert leftover.returncode == 1 and "remove table migration_info" in leftover.stderr, leftover.stderr
        assert "DROP TABLE migration_info;" in PAGE
        asyncio.run(server_execute(pg_server, "DROP TABLE migration_info", database=old_database))
        _ok(project.run(check, production))

        assert asyncio.run(_constraint_names(pg_server, old_database)) == old_names  # nothing else was run

        # A new database gets its tables, and the old names, from the baseline.
        with fresh_database(pg_server, prefix="mdb_new") as new_database:
            fresh_url = pg_server.url(new_database).set(drivername="postgresql")
            new = {"DATABASE_EMBEDDED": "false", "DATABASE_URL": fresh_url.render_as_string(hide_password=False)}
            _ok(project.run([sys.executable, "-m", "mountaineer_db.cli", "migrate", "apply"], new))
            assert asyncio.run(_constraint_names(pg_server, new_database)) == old_names
