"""Mutation check of the guarantees: break the library on purpose, one way at a time.

    .venv/bin/python scripts/mutants.py              # every mutant (about fifteen minutes)
    .venv/bin/python scripts/mutants.py shielded-cleanup hide-parameters
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --baseline   # the guarding tests pass unmutated

Each mutant is one small, realistic change to a promised behaviour. It is applied to a
scratch copy of the working tree, and only the tests that guard that behaviour run against
it (PYTHONPATH points at the copy, subprocesses included). A mutant the tests do not catch
has "survived": a guarantee with no test that fails when it breaks. Not run in CI (too slow);
run it before saying a guarantee-related change is done (docs: contributing).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    guarantee: str
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


M = Mutant
CATALOGUE: tuple[Mutant, ...] = (
    # -- request sessions ---------------------------------------------------------------------
    M(
        "rollback-at-the-end",
        "what the handler did not commit is rolled back",
        "mountaineer_db/session.py",
        "        if error is None:\n            await run_shielded(_release(session, invalidate=False))",
        "        if error is None:\n            await session.commit()\n"
        "            await run_shielded(_release(session, invalidate=False))",
        ("tests/test_session.py", "tests/test_request_session.py"),
    ),
    M(
        "shielded-cleanup",
        "cleanup finishes (rollback, connection returned) even when cancelled again",
        "mountaineer_db/session.py",
        "    task = asyncio.ensure_future(work)\n",
        "    await work\n    return\n    task = asyncio.ensure_future(work)\n",
        (
            "tests/faults/test_timeouts.py::test_cleanup_cancelled_again_still_rolls_back_and_returns_the_connection",
        ),
    ),
    M(
        "client-errors-logged-as-errors",
        "routine bad input (422, 4xx) is logged at INFO, not ERROR",
        "mountaineer_db/failure_log.py",
        "level = logging.ERROR if failure else logging.INFO",
        "level = logging.ERROR",
        ("tests/test_data_errors.py",),
    ),
    M(
        "expire-on-commit",
        "objects stay readable after commit without I/O",
        "mountaineer_db/session.py",
        "AsyncSession(self._engine, expire_on_commit=False,",
        "AsyncSession(self._engine, expire_on_commit=True,",
        ("tests/test_session.py",),
    ),
    M(
        "expunge-before-rollback",
        "what render() returns serializes with every loaded field after the re-render",
        "mountaineer_db/rerender.py",
        "    session.expunge_all()\n    try:",
        "    try:",
        ("tests/test_render_models.py", "tests/test_readme.py"),
    ),
    M(
        "rerender-sharing",
        "an action and its re-render share one session and one connection",
        "mountaineer_db/rerender.py",
        'and "app" not in request.scope',
        "and False",
        ("tests/test_request_session.py::test_sideeffect_and_its_rerender_share_one_session_and_one_connection",),
    ),
    M(
        "lost-connection-503",
        "a lost connection becomes DatabaseUnavailableError (503)",
        "mountaineer_db/exceptions.py",
        '    where = describe_target(url, user=False)\n    if isinstance(error, sa_exc.TimeoutError):',
        '    where = describe_target(url, user=False)\n    return None\n    if isinstance(error, sa_exc.TimeoutError):',
        ("tests/faults/test_terminate.py",),
    ),
    # -- connections ----------------------------------------------------------------------------
    M(
        "named-statements",
        "unnamed prepared statements by default (PgBouncer in transaction mode)",
        "mountaineer_db/engine.py",
        "        cache_size = 100 if fixed else 0",
        "        cache_size = 100",
        ("tests/test_pgbouncer.py::test_default_config_through_pgbouncer_has_zero_errors",),
    ),
    M(
        "session-level-timeouts",
        "server timeouts are SET LOCAL: they never outlive the transaction",
        "mountaineer_db/connections.py",
        'f"; SET LOCAL {name} = ',
        'f"; SET {name} = ',
        ("tests/test_engine.py::test_per_transaction_settings_never_outlive_the_transaction",),
    ),
    M(
        "connect-timeout",
        "connecting is bounded by DATABASE_CONNECT_TIMEOUT",
        "mountaineer_db/connections.py",
        "timeout=max(remaining, 0.001), **self._kwargs",
        "timeout=60, **self._kwargs",
        ("tests/faults/test_timeouts.py::test_connect_timeout_on_a_black_hole",),
    ),
    M(
        "chained-connect-error",
        "connect errors never carry the driver's error (whose frames hold the password)",
        "mountaineer_db/connections.py",
        "            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below\n"
        "                reason = _reason(error)\n",
        "            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below\n"
        '                raise DatabaseUnavailableError(f"Could not connect: {error}", url=self.url) from error\n',
        ("tests/faults/test_secrets.py",),
    ),
    M(
        "unbounded-close",
        "closing a connection never waits longer than its bound",
        "mountaineer_db/connections.py",
        "await super().close(timeout=self._mdb_close_timeout if timeout is None else timeout)",
        "await super().close(timeout=timeout)",
        ("tests/faults/test_timeouts.py::test_closing_a_connection_on_a_black_hole_is_bounded",),
    ),
    M(
        "no-client-check",
        "a cancelled statement stops on the server, anyio cancel scopes included",
        "mountaineer_db/connections.py",
        "        if self.get_server_version() >= (14,):",
        "        if False:",
        ("tests/faults/test_cancellation.py::test_anyio_cancel_scope_stops_the_statement_on_the_server",),
    ),
    M(
        "socket-host-ignored",
        "a Unix socket given as ?host= is used",
        "mountaineer_db/connections.py",
        '"host": host if isinstance(host, str) else url.host,',
        '"host": url.host,',
        ("tests/test_engine.py::test_a_unix_socket_url_connects",),
    ),
    # -- engines --------------------------------------------------------------------------------
    M(
        "hide-parameters",
        "bound values never appear in logs, SQL echo included",
        "mountaineer_db/engine.py",
        '"hide_parameters": True,',
        '"hide_parameters": False,',
        ("tests/test_session.py::test_bound_values_never_reach_a_log_record_even_with_sql_echo",),
    ),
    M(
        "cache-key-lock-timeout",
        "configs differing in any engine setting get their own engine",
        "mountaineer_db/engine.py",
        '    "DATABASE_LOCK_TIMEOUT",\n',
        "",
        ("tests/test_engine.py::test_configs_differing_only_in_a_timeout_each_get_it_on_the_server",),
    ),
    M(
        "checkout-keeps-dead-connections",
        "a pooled connection the server closed is replaced at checkout",
        "mountaineer_db/engine.py",
        "    if dbapi_connection.driver_connection.is_closed():",
        "    if False:",
        ("tests/faults/test_terminate.py",),
    ),
    M(
        "fork-unprotected",
        "a forked child never closes its parent's connections",
        "mountaineer_db/engine.py",
        "os.register_at_fork(after_in_child=_after_fork_in_child)",
        "pass",
        ("tests/test_lifecycle.py::test_a_forked_child_never_touches_its_parents_connections",),
    ),
    M(
        "no-dispose-at-loop-shutdown",
        "a loop's engines are disposed when the loop shuts down",
        "mountaineer_db/engine.py",
        "                entry.closer.__anext__().send(None)",
        "                pass",
        ("tests/test_lifecycle.py",),
    ),
    M(
        "retired-pool-keeps-connections",
        "connections of a disposed engine are closed when they come back",
        "mountaineer_db/engine.py",
        "        if self.retired and dbapi_connection is not None",
        "        if False and dbapi_connection is not None",
        ("tests/test_lifecycle.py::test_dispose_with_a_session_in_flight_closes_its_connection_when_it_comes_back",),
    ),
    M(
        "stale-statements",
        "statements cached before a migration are never reused",
        "mountaineer_db/engine.py",
        "    install_stale_statement_recovery(engine)",
        "    pass",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "no-first-statement-replay",
        "after a migration, a stale first statement runs again instead of failing the request",
        "mountaineer_db/session.py",
        "        or session.server_transaction_open()\n    ):",
        "        or True\n    ):",
        ("tests/test_stale_statements.py", "tests/test_migrating_while_serving.py"),
    ),
    M(
        "stale-error-missed-is-a-500",
        "a stale statement that reaches the session untranslated is replayed or a 503, never a 500",
        "mountaineer_db/session.py",
        "            unavailable = schema_changed_error(stale) if stale is not None else None",
        "            unavailable = None",
        ("tests/test_stale_statements.py::test_a_stale_statement_the_engine_recovery_missed_is_still_replayed_or_a_503",),
    ),
    # -- config ---------------------------------------------------------------------------------
    M(
        "password-shown",
        "the password is masked wherever the config is shown",
        "mountaineer_db/urls.py",
        "url.render_as_string(hide_password=True)",
        "url.render_as_string(hide_password=False)",
        ("tests/test_config.py::test_password_is_masked_everywhere_it_is_shown",),
    ),
    M(
        "port-validation",
        "a port outside 1-65535 is refused when the config is built",
        "mountaineer_db/config_checks.py",
        "        if not 1 <= port <= 65535:",
        "        if False:",
        ("tests/test_config.py::test_invalid_settings_name_the_field_and_the_fix",),
    ),
    M(
        "url-normalisation",
        "postgres:// and postgresql:// URLs use the asyncpg driver",
        "mountaineer_db/urls.py",
        '    return url.set(drivername="postgresql+asyncpg")',
        "    return url",
        ("tests/test_config.py::test_url_schemes_normalise_to_asyncpg",),
    ),
    M(
        "copied-url-stale",
        "a copied config's URL follows its parts",
        "mountaineer_db/config.py",
        "        elif self._url_from_parts_:",
        "        elif False:",
        ("tests/test_config.py::test_a_copy_with_other_parts_gets_a_url_that_follows_them",),
    ),
    M(
        "plain-password-shown",
        "a password re-declared as str stays secret",
        "mountaineer_db/config.py",
        '            annotations["POSTGRES_PASSWORD"] = SecretStr | None',
        "            pass",
        ("tests/test_config.py::test_a_password_redeclared_as_str_works_and_stays_masked",),
    ),
    # -- migrations and admin -------------------------------------------------------------------
    M(
        "no-advisory-lock",
        "concurrent `apply` runs apply each revision once",
        "mountaineer_db/migrations/environment.py",
        'text("SELECT pg_advisory_lock(:key)")',
        'text("SELECT CAST(:key AS bigint)")',
        ("tests/test_migrations.py",),
    ),
    M(
        "check-ignores-differences",
        "`migrate check` fails when models and database differ",
        "mountaineer_db/migrations/commands.py",
        "    if differences:\n",
        "    if False:\n",
        ("tests/test_migrations.py", "tests/test_cli.py"),
    ),
    M(
        "migrations-inherit-statement-timeout",
        "migrations are not cut short by the app's DATABASE_STATEMENT_TIMEOUT",
        "mountaineer_db/migrations/environment.py",
        '            "DATABASE_STATEMENT_TIMEOUT": None,\n',
        "",
        ("tests/test_migration_locks.py::test_migrations_do_not_inherit_the_apps_statement_timeout",),
    ),
    M(
        "unquoted-identifiers",
        "database names are quoted identifiers",
        "mountaineer_db/admin.py",
        "    return '\"' + name.replace('\"', '\"\"') + '\"'",
        "    return name",
        ("tests/test_admin.py",),
    ),
    # -- test kit -------------------------------------------------------------------------------
    M(
        "per-test-commit",
        "the kit rolls every test back, commits included",
        "mountaineer_db/testing/sessions.py",
        "                await run_shielded(outer.rollback())",
        "                await run_shielded(outer.commit())",
        ("tests/testing/test_isolation.py",),
    ),
    M(
        "no-rerender-override",
        "the kit's session reaches the @sideeffect re-render",
        "mountaineer_db/testing/sessions.py",
        "        setattr(render, _OVERRIDES_ATTR, {**(existing or {}), **replaced})",
        "        pass",
        (
            "tests/sample_apps/kit_app/test_kit_app.py",
            "tests/test_compat.py::test_if_mountaineer_changes_its_rerender_the_kit_still_reaches_it",
        ),
    ),
    M(
        "kit-uses-project-env",
        "the kit takes over the connection whatever the project's .env says",
        "mountaineer_db/testing/databases.py",
        '        "SQLALCHEMY_DATABASE_URI": None,\n        "POSTGRES_HOST":',
        '        "POSTGRES_HOST":',
        ("tests/testing/test_databases.py::test_the_kit_takes_over_the_connection_whatever_the_project_env_says",),
    ),
    # -- transactions ---------------------------------------------------------------------------
    M(
        "no-deadlock-retry",
        "run_in_transaction retries deadlocks",
        "mountaineer_db/retries.py",
        '"40P01": "a deadlock"',
        '"40XXX": "a deadlock"',
        ("tests/test_retries.py",),
    ),
    M(
        "get-or-404-returns-none",
        "get_or_404 raises ResourceNotFoundError for a missing row",
        "mountaineer_db/http_errors.py",
        "    instance = await session.get(",
        "    return await session.get(  # type: ignore[return-value]",
        ("tests/test_http_errors.py",),
    ),
    M(
        "unique-violation-not-409",
        "a unique violation becomes ResourceAlreadyExistsError (409), naming the constraint",
        "mountaineer_db/http_errors.py",
        "        if code in (UNIQUE_VIOLATION, FOREIGN_KEY_VIOLATION):",
        "        if code == FOREIGN_KEY_VIOLATION:",
        ("tests/test_http_errors.py",),
    ),
    # -- after-commit hooks ---------------------------------------------------------------------
    M(
        "on-commit-runs-after-rollback",
        "on_commit hooks are dropped when their transaction rolls back",
        "mountaineer_db/commit_hooks.py",
        "    if not committed:\n        logger.debug(",
        "    if False:\n        logger.debug(",
        ("tests/test_commit_hooks.py",),
    ),
    M(
        "robust-hook-stops-the-rest",
        "a robust hook's failure is logged and the remaining hooks still run",
        "mountaineer_db/commit_hooks.py",
        "            if not hook.robust:\n                raise",
        "            if True:\n                raise",
        ("tests/test_commit_hooks.py",),
    ),
    # -- operations -----------------------------------------------------------------------------
    M(
        "scram-cache-ignores-password",
        "the SCRAM cache is keyed by the password too: a wrong password never authenticates",
        "mountaineer_db/scram.py",
        "str(iterations).encode(), salt, password)",
        "str(iterations).encode(), salt)",
        ("tests/test_scram.py",),
    ),
    M(
        "scram-cache-ignores-salt",
        "the SCRAM cache is keyed by the salt: a new salt derives again",
        "mountaineer_db/scram.py",
        "str(iterations).encode(), salt, password)",
        "str(iterations).encode(), password)",
        ("tests/test_scram.py",),
    ),
    M(
        "tag-outlives-transaction",
        "a request's tag (application_name) is SET LOCAL: it never outlives its transaction",
        "mountaineer_db/origins.py",
        'return f"; SET LOCAL application_name = ',
        'return f"; SET application_name = ',
        (
            "tests/test_origins.py::test_a_tag_never_outlives_its_transaction_on_a_pooled_connection",
            "tests/test_origins.py::test_a_tag_never_outlives_its_transaction_through_pgbouncer",
        ),
    ),
    M(
        "slow-query-never-logged",
        "a statement slower than DATABASE_SLOW_QUERY_THRESHOLD is logged",
        "mountaineer_db/slow_queries.py",
        "            if elapsed > threshold:\n                _log(elapsed, threshold, statement, None)",
        "            if elapsed > threshold * 1000:\n                _log(elapsed, threshold, statement, None)",
        ("tests/test_slow_queries.py",),
    ),
    M(
        "num-queries-counts-savepoints",
        "assert_num_queries counts the app's statements, not the kit's savepoints",
        "mountaineer_db/testing/queries.py",
        "        if _BOOKKEEPING.match(statement):\n            return\n",
        "",
        ("tests/testing/test_queries.py",),
    ),
    M(
        "pool-waiters-lifo",
        "pool waiters get connections in arrival order (FIXED_PROCESS tail latency)",
        "mountaineer_db/fair_pool.py",
        "            waiter = self._waiters.popleft()",
        "            waiter = self._waiters.pop()",
        ("tests/test_fair_pool.py",),
    ),
    M(
        "health-ignores-pending-migrations",
        "check_database reports a database behind the code's migrations as not ready",
        "mountaineer_db/health.py",
        "    if heads is None or found is None or set(found) == set(heads.heads):",
        "    if True:",
        ("tests/example_app/test_readiness.py",),
    ),
    # -- migrations for deploys -----------------------------------------------------------------
    M(
        "no-migration-lock-timeout",
        "migrations give up after MIGRATIONS_LOCK_TIMEOUT instead of queueing the app behind them",
        "mountaineer_db/migrations/environment.py",
        '            "DATABASE_LOCK_TIMEOUT": config.MIGRATIONS_LOCK_TIMEOUT,',
        '            "DATABASE_LOCK_TIMEOUT": None,',
        ("tests/test_migration_locks.py::test_ddl_behind_a_lock_fails_fast_naming_the_setting",),
    ),
    # -- read replicas --------------------------------------------------------------------------
    M(
        "read-session-writable",
        "read sessions are read-only: a write fails clearly, on a replica or on the primary",
        "mountaineer_db/read_sessions.py",
        "connection.execution_options(postgresql_readonly=True,",
        "connection.execution_options(postgresql_readonly=False,",
        ("tests/test_replicas.py::test_a_write_on_a_read_session_fails_clearly",),
    ),
    M(
        "lagging-replica-used",
        "a replica more than DATABASE_REPLICA_MAX_LAG behind is skipped",
        "mountaineer_db/replicas.py",
        "            if not health.standby or health.lag > self.max_lag:",
        "            if not health.standby:",
        ("tests/test_replicas.py::test_a_lagging_replica_is_skipped_for_everyone_until_it_catches_up",),
    ),
    M(
        "forged-cookie-trusted",
        "a read-your-writes cookie we did not sign is ignored",
        "mountaineer_db/read_your_writes.py",
        "        if not any(hmac.compare_digest(",
        "        if False and not any(hmac.compare_digest(",
        ("tests/test_read_your_writes.py", "tests/test_replicas.py::test_a_forged_cookie_is_ignored"),
    ),
    # -- hostile input, secrets on disk, probes (issue 23) --------------------------------------
    M(
        "data-exception-is-a-500",
        "a value the database cannot take is a 422 naming the kind of problem",
        "mountaineer_db/session.py",
        "invalid = invalid_input_error_for(error) if unavailable is None else None",
        "invalid = None",
        ("tests/test_data_errors.py", "tests/test_hostile_input.py"),
    ),
    M(
        "driver-message-with-the-value-logged",
        "no value a client sent reaches a log line (asyncpg quotes arguments it cannot encode)",
        "mountaineer_db/data_errors.py",
        '        return f"invalid input for query argument {argument}: {_argument_reason(driver)}"',
        "        return str(driver)",
        ("tests/test_data_errors.py",),
    ),
    M(
        "server-data-exception-text-logged",
        "no value a client sent reaches a log line (PostgreSQL quotes values in class 22 messages)",
        "mountaineer_db/data_errors.py",
        "    if code is not None and code.startswith(DATA_EXCEPTION_CLASS):",
        "    if False:",
        ("tests/test_data_errors.py",),
    ),
    M(
        "get-or-404-with-an-impossible-key",
        "a lookup by a key no row can have is a 404",
        "mountaineer_db/http_errors.py",
        "        if invalid_input_error_for(error) is None:\n            raise",
        "        raise",
        ("tests/test_data_errors.py::test_a_lookup_by_an_id_past_the_columns_range_is_a_404",),
    ),
    M(
        "rollback-line-without-a-transaction",
        "our rollback line only when there was a transaction to roll back",
        "mountaineer_db/failure_log.py",
        "    if not (failure or transaction_open):",
        "    if False:",
        (
            "tests/test_data_errors.py::test_an_error_of_the_apps_own_code_is_left_to_the_framework_to_log",
            "tests/test_request_session.py::test_a_failing_rerender_gives_the_connection_back_and_is_logged_only_if_it_rolled_back",
        ),
    ),
    M(
        "readiness-probe-per-call",
        "concurrent readiness checks share one probe and one connection",
        "mountaineer_db/health.py",
        "    probe = _in_flight.get(key)",
        "    probe = None",
        ("tests/test_health.py",),
    ),
    M(
        "readiness-details-public",
        "the readiness JSON shows anyone no host, port, database, login or server text",
        "mountaineer_db/health.py",
        "    def as_dict(self, *, details: bool = False)",
        "    def as_dict(self, *, details: bool = True)",
        ("tests/test_health.py", "tests/example_app/test_readiness.py"),
    ),
    M(
        "cookie-key-from-the-password",
        "the read-your-writes key is never derived from the database password",
        "mountaineer_db/read_your_writes.py",
        "    keys = cookie_keys(config)\n    if keys:",
        "    keys = cookie_keys(config) or [config.database_url.render_as_string(hide_password=False)]\n    if keys:",
        ("tests/test_read_your_writes.py",),
    ),
    M(
        "production-without-cookie-keys",
        "production with replicas refuses to start without read-your-writes keys",
        "mountaineer_db/config_checks.py",
        '    if config.DATABASE_REPLICA_URLS and not keys and deploy_environment(config) == "production":',
        "    if False:",
        ("tests/test_read_your_writes.py",),
    ),
    M(
        "engine-url-keeps-the-password",
        "engine.url holds no password",
        "mountaineer_db/engine.py",
        "create_async_engine(without_password(url), **kwargs)",
        "create_async_engine(url.set(password=None), **kwargs)",
        ("tests/test_engine.py::test_the_engine_url_holds_no_password_yet_the_engine_logs_in",),
    ),
    M(
        "initdb-password-file-named",
        "initdb's password file is private and in no folder, even after SIGKILL",
        "mountaineer_db/cluster.py",
        "        with tempfile.TemporaryFile(dir=self.data_dir.parent) as handle:",
        '        with open(self.data_dir.parent / f".{self.data_dir.name}.pw", "w+b") as handle:',
        (
            "tests/test_secrets_on_disk.py::test_initdb_reads_the_password_from_a_private_file_that_is_in_no_folder",
            "tests/test_secrets_on_disk.py::test_a_start_killed_during_initdb_leaves_no_password_behind",
        ),
    ),
    M(
        "secret-files-created-readable",
        "files holding secrets are 0600 from their first byte",
        "mountaineer_db/_processes.py",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)",
        ("tests/test_secrets_on_disk.py",),
    ),
    M(
        "userlist-takes-a-line-break",
        "a password PgBouncer's user list cannot hold is a clear error",
        "mountaineer_db/pgbouncer.py",
        '            if any(character in text for character in "\\n\\r\\x00"):',
        "            if False:",
        ("tests/test_secrets_on_disk.py::test_a_password_the_files_cannot_hold_is_a_clear_error",),
    ),
    M(
        "infinite-timeouts-accepted",
        "inf and nan timeouts are refused when the config is built",
        "mountaineer_db/config_checks.py",
        "        if name.startswith(_OUR_PREFIXES) and isinstance(value, float) and not math.isfinite(value):",
        "        if False:",
        ("tests/test_config.py",),
    ),
    M(
        "enum-schema-unquoted",
        "enum migrations quote a schema named with a reserved word",
        "mountaineer_db/migrations/enums.py",
        "    return str(_PREPARER.quote(value))",
        "    return value",
        ("tests/test_migration_enums.py",),
    ),
    M(
        "enum-quotes-unescaped",
        "enum values with a single quote make valid SQL",
        "mountaineer_db/migrations/enums.py",
        "        _quote_values_for_sql(upgrade.ops)\n        _quote_values_for_sql(downgrade.ops)",
        "        pass",
        ("tests/test_migration_enums.py",),
    ),
    M(
        "createdb-sends-a-nul",
        "createdb and dropdb refuse a name with a NUL before any statement",
        "mountaineer_db/admin.py",
        '    if "\\x00" in name:\n        raise ConfigurationError(\n            "The database name holds',
        '    if False:\n        raise ConfigurationError(\n            "The database name holds',
        ("tests/test_admin.py::test_names_postgresql_cannot_take_are_refused_before_any_statement",),
    ),
)


def scratch_copy(target: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".venv-lowest", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", "test-artifacts"
    )
    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)


def run(mutant: Mutant | None, tests: tuple[str, ...], python: str, timeout: float) -> tuple[bool, float, str]:
    """Run `tests` against a copy with `mutant` applied; (passed, seconds, tail of the output)."""
    with tempfile.TemporaryDirectory(prefix="mdb-mutant-") as scratch:
        copy = Path(scratch) / "repo"
        scratch_copy(copy)
        if mutant is not None:
            path = copy / mutant.path
            text = path.read_text()
            if text.count(mutant.find) != 1:
                raise SystemExit(f"{mutant.name}: the code to mutate is not found exactly once in {mutant.path}")
            path.write_text(text.replace(mutant.find, mutant.replace))
        env = {**os.environ, "PYTHONPATH": str(copy)}
        started = time.monotonic()
        try:
            result = subprocess.run(
                [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            passed, output = result.returncode == 0, result.stdout + result.stderr
        except subprocess.TimeoutExpired:
            passed, output = False, f"timed out after {timeout:g}s"
        return passed, time.monotonic() - started, "\n".join(output.strip().splitlines()[-3:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--baseline", action="store_true", help="run the guarding tests without mutants")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = parser.parse_args()
    by_name = {mutant.name: mutant for mutant in CATALOGUE}
    unknown = [name for name in args.names if name not in by_name]
    if unknown:
        parser.error(f"unknown mutants: {', '.join(unknown)} (see --list)")
    chosen = [by_name[name] for name in args.names] or list(CATALOGUE)
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:38} {mutant.guarantee}")
        return 0
    if args.baseline:
        tests = tuple(dict.fromkeys(test for mutant in chosen for test in mutant.tests))
        passed, seconds, tail = run(None, tests, args.python, args.timeout * 4)
        print(f"baseline: {'passed' if passed else 'FAILED'} in {seconds:.0f}s\n{tail}")
        return 0 if passed else 1
    survived = []
    for mutant in chosen:
        passed, seconds, tail = run(mutant, mutant.tests, args.python, args.timeout)
        verdict = "SURVIVED" if passed else "killed"
        print(f"{verdict:8} {mutant.name:38} {seconds:5.0f}s  {mutant.guarantee}", flush=True)
        if passed:
            survived.append(mutant.name)
            print(f"         {tail}")
    summary = f"\n{len(chosen) - len(survived)} of {len(chosen)} mutants killed"
    print(summary + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
