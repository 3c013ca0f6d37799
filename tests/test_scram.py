"""The SCRAM salted-password cache (`mountaineer_db.engines.scram`), against real PostgreSQL and PgBouncer.

PgBouncer here holds the role's SCRAM secret in its `auth_file`, as its documentation
recommends: the salt and iteration count are then the same on every connection, which is
what makes the cache hit.
"""

import asyncio
import base64
import hashlib
import itertools
import logging
import os
import secrets
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseUnavailableError, database_session, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.scram import _HashlibForAsyncpg, _key, cache_info, clear_scram_cache, scram_attempt
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.conftest import admin_execute, require_pgbouncer
from tests.sample_apps import superuser_connect

ROLE = "mdb_scram_app"
BOUND = 64  # docs/performance.md: "process-local, bounded (64 entries)"


@pytest.fixture(scope="module")
def role(pg_server: Any, test_database: str) -> Iterator[str]:
    """A login role of its own (its password is changed by a test); the first password is returned."""
    password = "first-" + secrets.token_hex(8)
    asyncio.run(
        admin_execute(
            pg_server,
            "SET password_encryption = 'scram-sha-256'",
            f"DROP ROLE IF EXISTS {ROLE}",
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'",
            f'GRANT ALL ON DATABASE "{test_database}" TO {ROLE}',
        )
    )
    yield password
    asyncio.run(admin_execute(pg_server, f'REVOKE ALL ON DATABASE "{test_database}" FROM {ROLE}', f"DROP ROLE {ROLE}"))


async def _secret(pg_server: Any) -> str:
    connection = await superuser_connect(pg_server, "postgres")
    try:
        secret: str = await connection.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", ROLE)
    finally:
        await connection.close()
    assert secret.startswith("SCRAM-SHA-256$"), "the test role's password is not stored as a SCRAM secret"
    return secret


async def _set_password(pg_server: Any, password: str) -> str:
    await admin_execute(
        pg_server, "SET password_encryption = 'scram-sha-256'", f"ALTER ROLE {ROLE} PASSWORD '{password}'"
    )
    return await _secret(pg_server)


@pytest.fixture(scope="module")
def scram_bouncer(pg_server: Any, role: str) -> Iterator[PgBouncer]:
    """PgBouncer (transaction mode) whose auth_file holds the test role's SCRAM secret."""
    require_pgbouncer()
    secret = asyncio.run(_secret(pg_server))
    work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-scram-bouncer-"))
    os.chmod(work_dir, 0o755)
    with PgBouncer("127.0.0.1", pg_server.port, {ROLE: secret}, work_dir=work_dir) as bouncer:
        yield bouncer


_RELOADS = itertools.count(1)


async def _reload(bouncer: PgBouncer) -> None:
    """Rewrite PgBouncer's auth_file from `bouncer.users` and make it re-read it (SIGHUP to our PgBouncer)."""
    bouncer._write_files()
    # PgBouncer skips an auth_file whose size and mtime (in seconds) did not change.
    userlist = bouncer.work_dir / "userlist.txt"
    stamp = userlist.stat().st_mtime + 10 * next(_RELOADS)
    os.utime(userlist, (stamp, stamp))
    assert bouncer.process is not None
    before = bouncer.log_path.read_text().count("SIGHUP")
    bouncer.process.send_signal(signal.SIGHUP)
    for _ in range(100):
        if bouncer.log_path.read_text().count("SIGHUP") > before:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("PgBouncer did not log the SIGHUP")
    await asyncio.sleep(0.1)


def _direct(pg_server: Any, database: str, password: str, **settings: Any) -> DatabaseConfig:
    url = pg_server.url(database, user=ROLE, password=password)
    return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **settings)


def _bounced(bouncer: PgBouncer, database: str, password: str, **settings: Any) -> DatabaseConfig:
    url = bouncer.url(database, user=ROLE, password=password)
    return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **settings)


async def _query(config: DatabaseConfig) -> str:
    async with database_session(config) as session:
        user: str = (await session.exec(text("SELECT current_user"))).one()[0]  # type: ignore[call-overload]
    return user


def _salted(password: str, secret: str) -> tuple[bytes, bytes, int]:
    """(salt, salted password, iterations) from a `SCRAM-SHA-256$<i>:<salt>$...` secret, derived here."""
    head = secret.split("$")[1]
    iterations, salt_b64 = head.split(":")
    salt = base64.b64decode(salt_b64)
    return salt, hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(iterations)), int(iterations)


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    clear_scram_cache()
    yield
    clear_scram_cache()


async def test_direct_connections_derive_the_key_once_and_cache_exactly_hashlibs_value(
    pg_server: Any, test_database: str, role: str
) -> None:
    """Real PostgreSQL: the second connection hits the cache; the cached value is byte-identical
    to PBKDF2 computed here from the server's own secret."""
    config = _direct(pg_server, test_database, role)
    assert await _query(config) == ROLE
    assert cache_info() == (1, 0, 1)
    assert await _query(config) == ROLE
    assert cache_info() == (1, 1, 1)
    salt, expected, iterations = _salted(role, await _secret(pg_server))
    from mountaineer_db.engines.scram import _cache

    assert _cache._entries[_key("sha256", role.encode(), salt, iterations, None)] == expected
    await dispose_engines()
    assert cache_info() == (0, 0, 0), "dispose_engines() empties the cache"


async def test_through_pgbouncer_with_a_scram_auth_file_every_later_connection_hits(
    scram_bouncer: PgBouncer, test_database: str, role: str
) -> None:
    """Connect-per-request through PgBouncer: one derivation, then hits; every request authenticates."""
    config = _bounced(scram_bouncer, test_database, role)
    for _ in range(4):
        assert await _query(config) == ROLE
    assert cache_info() == (1, 3, 1)


async def test_a_wrong_password_is_rejected_every_time_and_never_cached(
    pg_server: Any, scram_bouncer: PgBouncer, test_database: str, role: str
) -> None:
    """A wrong password derives a key (a miss) that the server rejects; it is never kept, so the next
    attempt derives (and is rejected) again, while the right password keeps working."""
    for config, wrong in (
        (_bounced(scram_bouncer, test_database, role), _bounced(scram_bouncer, test_database, role + "x")),
        (_direct(pg_server, test_database, role), _direct(pg_server, test_database, role + "x")),
    ):
        clear_scram_cache()
        assert await _query(config) == ROLE
        assert cache_info() == (1, 0, 1)
        for attempt in (1, 2):
            with pytest.raises(DatabaseUnavailableError, match="authentication failed"):
                await _query(wrong)
            assert cache_info() == (1, 0, 1 + attempt), "a rejected derivation was cached or looked up wrongly"
        assert await _query(config) == ROLE
        assert cache_info() == (1, 1, 3)


async def test_a_password_change_is_picked_up_directly_and_through_pgbouncer(
    pg_server: Any, scram_bouncer: PgBouncer, test_database: str, role: str
) -> None:
    """After ALTER ROLE ... PASSWORD (a new salt; PgBouncer's auth_file updated and reloaded), the old
    password is refused although its derivation was cached, and the new one works."""
    old_direct, old_bounced = _direct(pg_server, test_database, role), _bounced(scram_bouncer, test_database, role)
    assert await _query(old_direct) == ROLE
    assert await _query(old_bounced) == ROLE
    new = "second-" + secrets.token_hex(8)
    secret = await _set_password(pg_server, new)
    scram_bouncer.users[ROLE] = secret
    try:
        await _reload(scram_bouncer)
        for old in (old_direct, old_bounced):
            with pytest.raises(DatabaseUnavailableError, match="authentication failed"):
                await _query(old)
        assert await _query(_direct(pg_server, test_database, new)) == ROLE
        assert await _query(_bounced(scram_bouncer, test_database, new)) == ROLE
    finally:
        secret = await _set_password(pg_server, role)
        scram_bouncer.users[ROLE] = secret
        await _reload(scram_bouncer)
    assert await _query(old_bounced) == ROLE


async def test_database_scram_cache_false_derives_every_time(
    scram_bouncer: PgBouncer, test_database: str, role: str
) -> None:
    config = _bounced(scram_bouncer, test_database, role, DATABASE_SCRAM_CACHE=False)
    for _ in range(3):
        assert await _query(config) == ROLE
    assert cache_info() == (0, 0, 0)
    assert engine_for(config) is not engine_for(_bounced(scram_bouncer, test_database, role))


async def test_other_asyncpg_connections_and_hashlib_itself_are_untouched(
    scram_bouncer: PgBouncer, test_database: str, role: str
) -> None:
    """Only connections our Connector opens use the cache; hashlib.pbkdf2_hmac is still the builtin."""
    assert await _query(_bounced(scram_bouncer, test_database, role)) == ROLE  # installs the hook
    before = cache_info()
    for _ in range(2):
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=scram_bouncer.port,
            user=ROLE,
            password=role,
            database=test_database,
            ssl=False,
            statement_cache_size=0,
        )
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
    assert cache_info() == before
    assert hashlib.pbkdf2_hmac is getattr(__import__("_hashlib"), "pbkdf2_hmac", hashlib.pbkdf2_hmac)
    assert type(hashlib).__name__ == "module"


def test_the_hook_returns_hashlibs_bytes_and_caches_only_authenticated_attempts() -> None:
    hook = _HashlibForAsyncpg()
    password, salt = secrets.token_bytes(12), secrets.token_bytes(16)
    expected = hashlib.pbkdf2_hmac("sha256", password, salt, 4096)
    assert hook.pbkdf2_hmac("sha256", password, salt, 4096) == expected  # outside an attempt: plain
    assert cache_info() == (0, 0, 0)
    with scram_attempt(enabled=True):
        assert hook.pbkdf2_hmac("sha256", password, salt, 4096) == expected
    assert cache_info() == (0, 0, 1), "an attempt that never authenticated left its derivation behind"
    with scram_attempt(enabled=True) as attempt:
        assert hook.pbkdf2_hmac("sha256", password, salt, 4096) == expected
        attempt.authenticated()
    with scram_attempt(enabled=True):
        assert hook.pbkdf2_hmac("sha256", password, salt, 4096) == expected
        assert hook.pbkdf2_hmac("sha256", password, salt, 4095) == hashlib.pbkdf2_hmac("sha256", password, salt, 4095)
        assert hook.pbkdf2_hmac("sha256", password, salt[:-1], 4096) != expected
        assert hook.pbkdf2_hmac("sha512", password, salt, 4096) == hashlib.pbkdf2_hmac("sha512", password, salt, 4096)
    assert cache_info() == (1, 1, 5)
    assert hook.sha256(b"x").digest() == hashlib.sha256(b"x").digest()  # every other name is hashlib's


async def test_no_password_or_derived_key_in_reprs_or_logs(
    pg_server: Any, scram_bouncer: PgBouncer, test_database: str, role: str, caplog: pytest.LogCaptureFixture
) -> None:
    from mountaineer_db.engines import scram

    caplog.set_level(logging.DEBUG)
    config = _bounced(scram_bouncer, test_database, role, DATABASE_ECHO=True)
    assert await _query(config) == ROLE
    assert await _query(config) == ROLE
    with pytest.raises(DatabaseUnavailableError):
        await _query(_bounced(scram_bouncer, test_database, role + "-wrong"))
    _, derived, _ = _salted(role, await _secret(pg_server))
    with scram_attempt(enabled=True) as attempt:
        shown = [repr(scram._cache), repr(attempt), repr(cache_info()), repr(_HashlibForAsyncpg())]
    shown += [repr(engine_for(config)), repr(config), caplog.text]
    for text_ in shown:
        for secret in (role, derived.hex(), base64.b64encode(derived).decode(), repr(derived)[2:-1]):
            assert secret not in text_


def test_the_cache_holds_at_most_its_bound_dropping_the_least_recently_used() -> None:
    """docs/performance.md: process-local and bounded (64 entries); here, 64 + 10 distinct salts."""
    hook = _HashlibForAsyncpg()
    password = secrets.token_bytes(12)
    salts = [secrets.token_bytes(16) for _ in range(BOUND + 10)]

    def derive(salt: bytes, *, keep: bool) -> bytes:
        with scram_attempt(enabled=True) as attempt:
            value = hook.pbkdf2_hmac("sha256", password, salt, 2)  # 2 iterations: a lookup costs the same
            if keep:
                attempt.authenticated()
        return value

    for salt in salts[:BOUND]:
        derive(salt, keep=True)
    assert cache_info().entries == BOUND
    derive(salts[0], keep=False)  # a hit: the first salt becomes the most recently used
    for salt in salts[BOUND:]:
        derive(salt, keep=True)
    assert cache_info().entries == BOUND, "more distinct derivations than the bound: the cache holds the bound"
    hits = cache_info().hits
    derive(salts[0], keep=False)
    derive(salts[-1], keep=False)
    assert cache_info().hits == hits + 2, "the most recently used entries stayed"
    misses = cache_info().misses
    derive(salts[1], keep=False)
    assert cache_info().misses == misses + 1, "the least recently used entry was dropped"
