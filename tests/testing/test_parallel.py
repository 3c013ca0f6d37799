"""The kit under pytest-xdist, as a user runs it: `pytest -n 2` on a project of their own.

Each worker must get its own database, a copy of one template whose tables were made once,
on one server the run shares; and the run must leave nothing behind (server, templates,
folders). The project is written to a temporary folder and run in a subprocess, so what is
tested is the plugin as installed, with xdist's own controller and workers.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db.testing.parallel import shared_run_dir

pytest.importorskip("xdist")

CONFTEST = '''
import pytest
from sqlmodel import Field, SQLModel


class ParallelNote(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    body: str


@pytest.fixture(scope="session")
def mdb_schema():
    return SQLModel.metadata
'''

# Four modules of the same test, so that each of the two workers gets some (xdist's load
# scheduling hands the first tests out to every worker).
TEST_MODULE = '''
import json
import os
from pathlib import Path

from sqlalchemy import text
from sqlmodel import select

from conftest import ParallelNote


async def test_writes_into_its_own_database(mdb_session, mdb_database, mdb_server):
    mdb_session.add(ParallelNote(body=os.environ["PYTEST_XDIST_WORKER"]))
    await mdb_session.flush()
    bodies = (await mdb_session.exec(select(ParallelNote.body))).all()
    database = (await mdb_session.exec(text("SELECT current_database()"))).one()[0]
    query = "SELECT datname FROM pg_database WHERE datistemplate AND datname LIKE 'mdb_template_%'"
    templates = (await mdb_session.exec(text(query))).all()
    record = {
        "worker": os.environ["PYTEST_XDIST_WORKER"],
        "pid": os.getpid(),
        "database": database,
        "fixture_database": mdb_database.name,
        "port": mdb_server.port,
        "bodies": list(bodies),
        "templates": [row[0] for row in templates],
        "testrunuid": os.environ["PYTEST_XDIST_TESTRUNUID"],
    }
    out = Path(os.environ["PARALLEL_OUT"]) / f"{os.getpid()}-{__name__}.json"
    out.write_text(json.dumps(record))
'''


def _environment(out: Path) -> dict[str, str]:
    scrubbed = ("POSTGRES_", "DATABASE_", "SQLALCHEMY_", "MIGRATIONS_", "MOUNTAINEER_DB_", "PYTEST_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(scrubbed)}
    env["PARALLEL_OUT"] = str(out)
    return env


@pytest.mark.slow
def test_pytest_n_2_gives_each_worker_a_copy_of_one_template(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "addopts = -p no:cacheprovider\nfilterwarnings = error\n"
    )
    (project / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    for number in range(4):
        (project / "tests" / f"test_notes_{number}.py").write_text(textwrap.dedent(TEST_MODULE))
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "--basetemp", str(tmp_path / "basetemp"), "tests"],
        cwd=project,
        env=_environment(out),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "4 passed" in result.stdout, result.stdout[-2000:]

    records: list[dict[str, Any]] = [json.loads(path.read_text()) for path in out.glob("*.json")]
    assert len(records) == 4
    by_worker: dict[str, set[str]] = {}
    for record in records:
        by_worker.setdefault(record["worker"], set()).add(record["database"])
        assert record["database"] == record["fixture_database"]
        # The table is there (made in the template), and the test sees only its own row.
        assert record["bodies"] == [record["worker"]]
    assert set(by_worker) == {"gw0", "gw1"}, records
    assert all(len(names) == 1 for names in by_worker.values()), "one database per worker for its session"
    assert by_worker["gw0"] != by_worker["gw1"], "the workers share a database"
    assert len({record["port"] for record in records}) == 1, "the workers did not share one server"
    assert len({record["pid"] for record in records}) == 2
    (template,) = {name for record in records for name in record["templates"]}  # one template, made once
    assert template.startswith("mdb_template_")

    # Nothing left: the server is stopped and the shared folder removed by the controller.
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", records[0]["port"]))
    (run,) = {record["testrunuid"] for record in records}
    assert not shared_run_dir(run).exists()


def test_schemas_are_told_apart_by_their_tables_or_their_migrations() -> None:
    from sqlalchemy import Column, Integer, MetaData, Table, Text

    from mountaineer_db import DatabaseConfig
    from mountaineer_db.testing import apply_migrations
    from mountaineer_db.testing.parallel import template_key

    def metadata(*columns: str) -> MetaData:
        schema = MetaData()
        Table("note", schema, Column("id", Integer, primary_key=True), *(Column(name, Text) for name in columns))
        return schema

    assert template_key(metadata("body")) == template_key(metadata("body"))  # same DDL in every worker
    assert template_key(metadata("body")) != template_key(metadata("body", "title"))
    assert template_key(apply_migrations(DatabaseConfig)) == template_key(apply_migrations(DatabaseConfig))
    migrations = template_key(apply_migrations(DatabaseConfig))
    assert migrations != template_key(apply_migrations(DatabaseConfig, revision="abc"))
    assert template_key(lambda config: None) is None  # a hook of the user's own: built in each worker

    def hook(config: DatabaseConfig) -> None: ...

    hook.mdb_template_key = "my-migrations-v1"  # type: ignore[attr-defined]
    assert template_key(hook) == "my-migrations-v1"
