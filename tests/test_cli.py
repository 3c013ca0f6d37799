"""The `mountaineer-db` CLI: exit codes and one-line messages for expected failures, config
discovery, `--help` without any database, and dropdb's confirmation."""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from mountaineer_db.cli import cli, migrate
from mountaineer_db.servers.cluster import free_port
from tests.sample_apps import (
    cli_env,
    copy_sample_app,
    fresh_database,
    run_cli,
    sample_app_on_path,
    server_fetch,
    url_string,
    write_migrations_folder,
)

APP_CONFIG = ("--config", "migrapp.config:AppConfig")


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_cli") as name:
        yield name


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    """A directory holding the sample package with an (empty) migrations folder."""
    write_migrations_folder(copy_sample_app(tmp_path))
    return tmp_path


def one_error_line(result: "subprocess.CompletedProcess[str]") -> str:
    """The failure's stderr, checked to be exactly one `Error: ...` line with exit code 1."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_an_unimportable_config_class_is_one_clear_line(app_root: Path, pg_server: Any) -> None:
    result = run_cli("--config", "nosuch:Thing", "migrate", "current", cwd=app_root, env=cli_env(pg_server.url("x")))
    assert one_error_line(result) == (
        "Error: --config is 'nosuch:Thing', but module 'nosuch' cannot be imported (no module named 'nosuch'). "
        "Check the spelling, install the app (pip install -e .) or run from the directory that contains it."
    )


def test_debug_shows_the_traceback(app_root: Path, pg_server: Any) -> None:
    result = run_cli(
        "--debug", "--config", "nosuch:Thing", "migrate", "current", cwd=app_root, env=cli_env(pg_server.url("x"))
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "mountaineer_db.exceptions.ConfigurationError: --config is 'nosuch:Thing'" in result.stderr


def test_an_invalid_port_is_one_clear_line(app_root: Path) -> None:
    env = cli_env("postgresql://app:secret-pw@127.0.0.1:70000/app")
    line = one_error_line(run_cli(*APP_CONFIG, "migrate", "current", cwd=app_root, env=env))
    assert line == (
        "Error: Invalid AppConfig settings: SQLALCHEMY_DATABASE_URI port is 70000; use a TCP port from 1 to 65535 "
        "(PostgreSQL's default is 5432)."
    )


def test_an_unreachable_database_is_one_clear_line(app_root: Path) -> None:
    """Issue 25: a DATABASE_URL whose port is closed is answered in the URL's terms."""
    port = free_port()  # nothing listens there: refused at once
    env = cli_env(f"postgresql://app:secret-pw@127.0.0.1:{port}/app")
    env["DATABASE_URL"] = env.pop("SQLALCHEMY_DATABASE_URI")
    line = one_error_line(run_cli(*APP_CONFIG, "migrate", "apply", cwd=app_root, env=env))
    assert line.startswith(f'Error: Could not connect to database "app" on 127.0.0.1:{port} as user "app": ')
    assert line.endswith(
        ". Check the host and port in SQLALCHEMY_DATABASE_URI (or DATABASE_URL) and that the server accepts TCP "
        "connections."
    )
    assert "POSTGRES_" not in line and "secret-pw" not in line


def test_an_unreachable_database_given_as_parts_names_the_parts(app_root: Path, pg_server: Any) -> None:
    env = _parts_env(pg_server)
    env.update(POSTGRES_PORT=str(free_port()), POSTGRES_DB="app")
    line = one_error_line(run_cli(*APP_CONFIG, "migrate", "apply", cwd=app_root, env=env))
    assert line.endswith(". Check POSTGRES_HOST and POSTGRES_PORT and that the server accepts TCP connections.")


def test_an_unknown_revision_is_one_clear_line(app_root: Path, pg_server: Any, database: str) -> None:
    env = cli_env(pg_server.url(database))
    line = one_error_line(run_cli(*APP_CONFIG, "migrate", "apply", "nosuch", cwd=app_root, env=env))
    assert line == (
        "Error: Can't locate revision identified by 'nosuch'. Run `mountaineer-db migrate history` to list "
        "the revisions."
    )


def test_config_from_the_environment_variable(app_root: Path, pg_server: Any, database: str) -> None:
    env = cli_env(pg_server.url(database), MOUNTAINEER_DB_CONFIG="migrapp.config:AppConfig")
    result = run_cli("createdb", cwd=app_root, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'Already exists: database "{database}" on 127.0.0.1:')


# -- in-process (click's CliRunner): fast checks of the shell itself -------------------------


@pytest.fixture
def app_on_path(tmp_path: Path) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        write_migrations_folder(package)
        yield package


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["migrate"],
        ["migrate", "init"],
        ["migrate", "generate"],
        ["migrate", "apply"],
        ["migrate", "rollback"],
        ["migrate", "current"],
        ["migrate", "history"],
        ["migrate", "check"],
        ["migrate", "stamp"],
        ["migrate", "sql"],
        ["migrate", "lint"],
        ["createdb"],
        ["dropdb"],
    ],
)
def test_help_needs_no_config_and_no_database(command: list[str]) -> None:
    env = {"MOUNTAINEER_DB_CONFIG": "nosuch:Thing", "SQLALCHEMY_DATABASE_URI": "postgresql://u:p@127.0.0.1:1/x"}
    result = CliRunner().invoke(cli, [*command, "--help"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")


def test_no_config_anywhere_says_how_to_give_one() -> None:
    result = CliRunner().invoke(cli, ["migrate", "current"], env={"MOUNTAINEER_DB_CONFIG": ""})
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: No app config found. Pass --config module:ClassName (for example myapp.config:AppConfig) "
        "or set MOUNTAINEER_DB_CONFIG=module:ClassName.\n"
    )


def test_mounted_in_an_apps_cli_the_registered_config_is_used(app_on_path: Path, pg_server: Any, database: str) -> None:
    """`app_cli.add_command(migrate)`: the commands find the config the app instantiated."""
    from migrapp.config import AppConfig  # type: ignore[import-not-found]

    @click.group()
    def app_cli() -> None:
        """The app's own CLI."""

    app_cli.add_command(migrate)
    AppConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
    result = CliRunner().invoke(app_cli, ["migrate", "current"], env={"MOUNTAINEER_DB_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert result.stdout == "No migration applied.\n"


def test_rollback_rejects_a_revision_and_steps_together(app_on_path: Path, pg_server: Any, database: str) -> None:
    env = {"SQLALCHEMY_DATABASE_URI": url_string(pg_server.url(database))}
    result = CliRunner().invoke(cli, [*APP_CONFIG, "migrate", "rollback", "base", "-n", "2"], env=env)
    assert result.exit_code == 1
    assert result.stderr == "Error: Pass either a revision or a number of steps (-n) to roll back, not both.\n"


def test_dropdb_asks_first_and_no_keeps_the_database(app_on_path: Path, pg_server: Any, database: str) -> None:
    env = {"SQLALCHEMY_DATABASE_URI": url_string(pg_server.url(database))}
    result = CliRunner().invoke(cli, [*APP_CONFIG, "dropdb"], env=env, input="n\n")
    assert result.exit_code == 1
    assert f'Drop database "{database}" on 127.0.0.1:' in result.stdout
    assert "Aborted" in result.stderr
    assert asyncio.run(server_fetch(pg_server, "SELECT 1 FROM pg_database WHERE datname = $1", database)) == [(1,)]

    result = CliRunner().invoke(cli, [*APP_CONFIG, "dropdb", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f'Dropped database "{database}"')
    assert asyncio.run(server_fetch(pg_server, "SELECT 1 FROM pg_database WHERE datname = $1", database)) == []


# -- Issue 23: names PostgreSQL cannot take ------------------------------------------------------


def _parts_env(pg_server: Any) -> dict[str, str]:
    """The CLI's environment with the server given as POSTGRES_* parts instead of a URL."""
    url = pg_server.url("app")
    env = cli_env(url)
    del env["SQLALCHEMY_DATABASE_URI"]
    env.update(POSTGRES_HOST=url.host, POSTGRES_PORT=str(url.port), POSTGRES_USER=url.username)
    env.update(POSTGRES_PASSWORD=url.password)
    return env


@pytest.mark.parametrize("command", [["createdb"], ["dropdb", "--yes"]], ids=["createdb", "dropdb"])
def test_a_database_name_with_a_nul_byte_is_one_clear_line(app_root: Path, pg_server: Any, command: list[str]) -> None:
    """It used to reach the server and come back as asyncpg's traceback. (A NUL cannot be in an
    environment variable; a .env file can hold one.)"""
    (app_root / ".env").write_bytes(b"POSTGRES_DB=app\x00x\n")
    line = one_error_line(run_cli(*APP_CONFIG, *command, cwd=app_root, env=_parts_env(pg_server)))
    assert line == (
        "Error: Invalid AppConfig settings: POSTGRES_DB (from the file .env) holds a NUL character, which "
        "PostgreSQL cannot take in names, logins or hosts; correct it (the value is not shown)."
    )


@pytest.mark.parametrize("command", [["createdb"], ["dropdb", "--yes"]], ids=["createdb", "dropdb"])
def test_a_database_name_that_is_not_utf8_is_one_clear_line(app_root: Path, pg_server: Any, command: list[str]) -> None:
    """POSTGRES_DB set to bytes that are not UTF-8 (Python sees an unpaired surrogate)."""
    env = {**_parts_env(pg_server), "POSTGRES_DB": "app\udcff"}
    line = one_error_line(run_cli(*APP_CONFIG, *command, cwd=app_root, env=env))
    assert line == (
        "Error: Invalid AppConfig settings: POSTGRES_DB (from the environment variable POSTGRES_DB) holds bytes "
        "that are not UTF-8 text (an unpaired surrogate); correct it (the value is not shown)."
    )
