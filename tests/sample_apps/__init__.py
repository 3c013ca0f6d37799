"""Helpers for tests that need an app package: copy `migrapp`, run the CLI, make databases."""

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).parent
PYTHON = sys.executable

# Settings a developer's shell could hold that would change what the sample app sees.
_SCRUBBED = (
    "DATABASE_URL",
    "SQLALCHEMY_DATABASE_URI",
    "MIGRATIONS_DATABASE_URI",
    "MIGRATIONS_METADATA",
    "MOUNTAINEER_DB_CONFIG",
    "MIGRAPP_MODEL_VERSION",
    "MIGRAPP_TABLES_VERSION",
    "MIGRAPP_ENUM_VERSION",
    "MIGRAPP_HOSTILE_VERSION",
    "MIGRATIONS_LOCK_TIMEOUT",
)


def old_template_schema() -> list[str]:
    """The statements mountaineer 0.8 ran for the moving guide's models (old_template_app/schema_0_8.sql)."""
    lines = (HERE / "old_template_app" / "schema_0_8.sql").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("--"))
    return [statement for statement in text.split(";") if statement.strip()]


def copy_sample_app(root: Path, name: str = "migrapp") -> Path:
    """Copy the sample package into `root` (a directory to put on sys.path); returns the package dir."""
    target = root / name
    shutil.copytree(HERE / name, target, ignore=shutil.ignore_patterns("__pycache__", "migrations"))
    return target


def write_migrations_folder(package: Path) -> Path:
    """What `migrate init` writes (env.py, script template, versions/), without running it."""
    from mountaineer_db.migrations.commands import TEMPLATES

    directory = package / "migrations"
    (directory / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copyfile(TEMPLATES / name, directory / name)
    return directory


@contextlib.contextmanager
def sample_app_on_path(root: Path, name: str = "migrapp") -> Iterator[Path]:
    """The sample package copied into `root` and importable in this process; forgotten afterwards."""
    package = copy_sample_app(root, name)
    sys.path.insert(0, str(root))
    try:
        yield package
    finally:
        sys.path.remove(str(root))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def url_string(url: Any) -> str:
    """A URL as text with the real (percent-encoded) password, for environment variables."""
    return str(url.render_as_string(hide_password=False))


def cli_env(database_url: Any, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: the database URL and nothing inherited that could interfere."""
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env["SQLALCHEMY_DATABASE_URI"] = database_url if isinstance(database_url, str) else url_string(database_url)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> "subprocess.CompletedProcess[str]":
    """`python -m mountaineer_db.cli ARGS` in `cwd` (which holds the sample package)."""
    return subprocess.run(
        [PYTHON, "-m", "mountaineer_db.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def superuser_connect(server: Any, database: str = "postgres") -> asyncpg.Connection:
    """A plain asyncpg connection to `database` as the server's superuser (no mountaineer_db)."""
    url = server.url(database)
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=database, ssl=False
    )


async def server_fetch(server: Any, query: str, *args: Any, database: str = "postgres") -> list[Any]:
    """Rows of `query` run as the superuser on `database`."""
    connection = await superuser_connect(server, database)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def server_execute(server: Any, *statements: str, database: str = "postgres") -> None:
    """Run statements as the superuser on `database`, outside a transaction."""
    connection = await superuser_connect(server, database)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(server: Any, prefix: str = "mdb_mig") -> Iterator[str]:
    """A new empty database on `server`, dropped (sessions ended) afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(server_execute(server, f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        asyncio.run(server_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
