"""How connections are opened: the SSL mode and the application_name a config asks for reach the server.

Each is read on the serving backend itself (`pg_stat_ssl`, `current_setting`), never inferred
from the arguments we pass.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseUnavailableError, database_session
from mountaineer_db.servers._processes import chown_tree, run_user
from mountaineer_db.servers.cluster import PostgresCluster

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def ssl_server() -> Iterator[PostgresCluster]:
    """A PostgreSQL of its own with SSL on and a self-signed certificate, as many managed databases have."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (apt-get install -y openssl); the SSL tests need a certificate")
    root = Path(tempfile.mkdtemp(prefix="mountaineer-db-ssl-"))
    os.chmod(root, 0o755)  # the unprivileged server user must reach its data directory
    cluster = PostgresCluster(root / "data", settings={"ssl": "on", "max_connections": "20", "shared_buffers": "16MB"})
    try:
        cluster.init()
        key, certificate = cluster.data_dir / "server.key", cluster.data_dir / "server.crt"
        request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=db.example"]
        subprocess.run(
            [openssl, *request, "-keyout", str(key), "-out", str(certificate)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        os.chmod(key, 0o600)  # PostgreSQL refuses a private key others can read
        chown_tree(cluster.data_dir, run_user())
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _ssl_in_use(config: DatabaseConfig) -> bool:
    async with database_session(config) as session:
        return bool((await session.exec(text(SSL_IN_USE))).one()[0])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("settings", "encrypted"),
    [
        ({"POSTGRES_SSLMODE": "require"}, True),
        ({"POSTGRES_SSLMODE": "prefer"}, True),
        ({"POSTGRES_SSLMODE": "disable"}, False),
        ({}, False),  # loopback: no SSL attempt unless asked for
        ({"query": {"sslmode": "require"}}, True),
    ],
    ids=["require", "prefer", "disable", "loopback-default", "url-require"],
)
async def test_the_sslmode_decides_whether_the_connection_is_encrypted(
    ssl_server: PostgresCluster, settings: dict[str, Any], encrypted: bool
) -> None:
    """`require` encrypts without verifying the certificate (libpq's meaning): a self-signed one is accepted."""
    url = ssl_server.url()
    query = settings.pop("query", None)
    if query:
        url = url.update_query_dict(query)
    assert await _ssl_in_use(DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **settings)) is encrypted


async def test_verify_modes_check_the_certificate_against_the_root_certificate(
    ssl_server: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify-ca and verify-full are asyncpg's (root certificate from PGSSLROOTCERT or ~/.postgresql):
    the self-signed certificate is its own CA, issued to db.example, not to 127.0.0.1."""
    monkeypatch.setenv("PGSSLROOTCERT", str(ssl_server.data_dir / "server.crt"))
    verify_ca = DatabaseConfig(SQLALCHEMY_DATABASE_URI=ssl_server.url(), POSTGRES_SSLMODE="verify-ca")
    assert await _ssl_in_use(verify_ca) is True
    verify_full = DatabaseConfig(SQLALCHEMY_DATABASE_URI=ssl_server.url(), POSTGRES_SSLMODE="verify-full")
    with pytest.raises(DatabaseUnavailableError) as caught:
        await _ssl_in_use(verify_full)
    assert "certificate verify failed" in str(caught.value), caught.value
    assert ssl_server.password not in str(caught.value)


async def test_sslmode_require_never_falls_back_to_an_unencrypted_connection(
    pg_server: Any, test_database: str
) -> None:
    """The suite's shared server has SSL off: `require` fails, saying which setting to check."""
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), POSTGRES_SSLMODE="require")
    with pytest.raises(DatabaseUnavailableError) as caught:
        await _ssl_in_use(config)
    assert str(caught.value).endswith(
        "rejected SSL upgrade. The server does not accept SSL connections: check POSTGRES_SSLMODE (or the "
        "URL's sslmode)."
    ), caught.value


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"DATABASE_APPLICATION_NAME": "from-the-setting"}, "from-the-setting"),
        ({"query": {"application_name": "from-the-url"}}, "from-the-url"),
    ],
    ids=["setting", "url"],
)
async def test_the_application_name_reaches_the_server(
    pg_server: Any, test_database: str, settings: dict[str, Any], shown: str
) -> None:
    url = pg_server.url(test_database)
    query = settings.pop("query", None)
    if query:
        url = url.update_query_dict(query)
    async with database_session(DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **settings)) as session:
        name = (await session.exec(text("SELECT current_setting('application_name')"))).one()[0]  # type: ignore[call-overload]
    assert name == shown
