"""An app made by `migrate init` before the package was regrouped (issue 24) still migrates.

`tests/sample_apps/premove_app` was written by `mountaineer-db migrate init` and `migrate
generate` of mountaineer_db at main 92c7622, the last flat layout: its `env.py` is exactly
what that release's template wrote. Apps in the wild carry such files for years, so every
later layout must run them as they are.
"""

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.sample_apps import HERE, cli_env, fresh_database, run_cli, server_fetch

FIXTURE = HERE / "premove_app"
REVISION = "ba605ea67fd2"
# The env.py the 92c7622 template wrote, byte for byte: never "fix" the fixture, fix the package.
ENV_PY_SHA256 = "2401e3c2217b35e524fab37166bd6b60cf4c20953c0935a295d1c400fc5c646a"
CONFIG = ("--config", "premove_app.config:AppConfig")


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    """The fixture app copied into a scratch directory (the CLI runs there, as in the app's repo)."""
    shutil.copytree(FIXTURE, tmp_path / "premove_app", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_fixture_is_what_the_old_template_wrote() -> None:
    env_py = (FIXTURE / "migrations" / "env.py").read_bytes()
    assert hashlib.sha256(env_py).hexdigest() == ENV_PY_SHA256
    # It imports the package the way the old template did (names from mountaineer_db.migrations).
    assert b"from mountaineer_db.migrations import load_config, load_metadata" in env_py


def test_an_app_generated_before_the_move_applies_checks_and_rolls_back(pg_server: Any, app_root: Path) -> None:
    with fresh_database(pg_server, prefix="mdb_premove") as name:
        env = cli_env(pg_server.url(name))

        applied = run_cli(*CONFIG, "migrate", "apply", cwd=app_root, env=env)
        assert applied.returncode == 0, applied.stderr
        assert REVISION in applied.stdout

        tables = asyncio.run(
            server_fetch(
                pg_server,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
                database=name,
            )
        )
        assert [row["table_name"] for row in tables] == ["alembic_version", "owner", "todo"]
        version = asyncio.run(server_fetch(pg_server, "SELECT version_num FROM alembic_version", database=name))
        assert [row["version_num"] for row in version] == [REVISION]

        # The models match the database: the new package's comparison agrees with the old revision.
        checked = run_cli(*CONFIG, "migrate", "check", cwd=app_root, env=env)
        assert checked.returncode == 0, checked.stderr

        rolled_back = run_cli(*CONFIG, "migrate", "rollback", cwd=app_root, env=env)
        assert rolled_back.returncode == 0, rolled_back.stderr
        left = asyncio.run(
            server_fetch(
                pg_server,
                "SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN ('owner', 'todo')",
                database=name,
            )
        )
        assert left[0]["n"] == 0
