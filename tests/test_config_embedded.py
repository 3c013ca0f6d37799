"""DATABASE_EMBEDDED next to settings that name a database: refused when the config is built.

The usual way there: an app from the `mountaineer.database` days keeps its docker-compose
`.env` (POSTGRES_HOST, POSTGRES_PORT, ...) and adds DATABASE_EMBEDDED=true. Before, the
commands went quietly to the old host; now the config says which settings collide.
"""

from pathlib import Path

import pytest
from mountaineer import ConfigBase
from pydantic_settings import SettingsConfigDict

from mountaineer_db import DatabaseConfig, DatabaseConfigError

# The .env create-mountaineer-app wrote in the 0.8 era (its docker-compose database).
OLD_DOTENV = """\
POSTGRES_HOST='localhost'
POSTGRES_PORT='5438'
POSTGRES_USER='myapp'
POSTGRES_PASSWORD='old-compose-password'
POSTGRES_DB='myapp_db'
"""


class OldTemplateConfig(ConfigBase, DatabaseConfig):
    """The 0.8 template's config.py, with the new import."""

    PACKAGE: str | None = "myapp"

    model_config = SettingsConfigDict(env_file=(".env",))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "DATABASE_URL",
        "SQLALCHEMY_DATABASE_URI",
        "MIGRATIONS_DATABASE_URI",
        "DATABASE_EMBEDDED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _error(config_class: type[DatabaseConfig] = OldTemplateConfig, **values: object) -> str:
    with pytest.raises(DatabaseConfigError) as caught:
        config_class(**values)
    return " ".join(str(caught.value).split())


def test_the_old_dotenv_with_database_embedded_is_refused_naming_the_lines(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(OLD_DOTENV + "DATABASE_EMBEDDED=true\n")
    message = _error()
    assert (
        "DATABASE_EMBEDDED (from the file .env) is true, but the config also names a database: POSTGRES_HOST "
        "(from the file .env). Use one or the other: for the development database delete POSTGRES_HOST, "
        "POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB (or DATABASE_URL) from .env and the "
        "environment; to use that server instead, set DATABASE_EMBEDDED=false."
    ) in message
    assert "old-compose-password" not in message


def test_without_the_host_lines_the_development_database_is_asked_for(tmp_path: Path) -> None:
    """POSTGRES_DB alone names a database on the development server, not a server."""
    (tmp_path / ".env").write_text("POSTGRES_DB='myapp_db'\nDATABASE_EMBEDDED=true\n")
    config = OldTemplateConfig()
    assert config.DATABASE_EMBEDDED and config.SQLALCHEMY_DATABASE_URI is None
    assert config.POSTGRES_DB == "myapp_db"


def test_an_emptied_host_line_names_no_database(tmp_path: Path) -> None:
    """`POSTGRES_HOST=` (the value deleted, the line kept) is no host, not a URL to an empty one."""
    (tmp_path / ".env").write_text("POSTGRES_HOST=\nPOSTGRES_DB=myapp_db\nDATABASE_EMBEDDED=true\n")
    config = OldTemplateConfig()
    assert config.SQLALCHEMY_DATABASE_URI is None


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        (
            "DATABASE_URL",
            "postgresql://app:pw@db.internal/app",
            "SQLALCHEMY_DATABASE_URI (from the environment variable DATABASE_URL)",
        ),
        ("POSTGRES_HOST", "db.internal", "POSTGRES_HOST (from the environment variable POSTGRES_HOST)"),
        (
            "MIGRATIONS_DATABASE_URI",
            "postgresql://app:pw@db.internal/app",
            "MIGRATIONS_DATABASE_URI (from the environment variable MIGRATIONS_DATABASE_URI)",
        ),
    ],
)
def test_a_database_named_in_the_environment_collides_with_embedded_from_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    """Pointing a command at production while .env turns the development database on needs DATABASE_EMBEDDED=false."""
    (tmp_path / ".env").write_text("DATABASE_EMBEDDED=true\n")
    monkeypatch.setenv(variable, value)
    assert f"is true, but the config also names a database: {named}." in _error()


def test_database_embedded_false_in_the_environment_overrides_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the guide's commands against a production database add."""
    (tmp_path / ".env").write_text("DATABASE_EMBEDDED=true\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal/app")
    monkeypatch.setenv("DATABASE_EMBEDDED", "false")
    config = OldTemplateConfig()
    assert not config.DATABASE_EMBEDDED and config.database_url.host == "db.internal"


def test_passed_in_values_collide_too() -> None:
    message = _error(DatabaseConfig, DATABASE_EMBEDDED=True, POSTGRES_HOST="db.example", POSTGRES_DB="app")
    assert "DATABASE_EMBEDDED (passed to DatabaseConfig()) is true" in message
    assert "POSTGRES_HOST (passed to DatabaseConfig())" in message
