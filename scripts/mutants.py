"""Mutation check of the guarantees: break the library on purpose, one way at a time.

    .venv/bin/python scripts/mutants.py              # every mutant (about thirty-five minutes)
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
        "mountaineer_db/requests/session.py",
        "        if error is None:\n            await run_shielded(_release(session, invalidate=False))",
        "        if error is None:\n            await session.commit()\n"
        "            await run_shielded(_release(session, invalidate=False))",
        ("tests/test_session.py", "tests/test_request_session.py"),
    ),
    M(
        "shielded-cleanup",
        "cleanup finishes (rollback, connection returned) even when cancelled again",
        "mountaineer_db/requests/session.py",
        "    task = _start_task(work)\n",
        "    await work\n    return\n    task = _start_task(work)\n",
        (
            "tests/faults/test_timeouts.py::test_cleanup_cancelled_again_still_rolls_back_and_returns_the_connection",
            "tests/test_handovers.py::test_a_timeout_inside_a_shielded_cleanup_cancels_the_cleanup_not_its_caller",
        ),
    ),
    M(
        "cleanup-through-the-loop",
        "cleanup that needs no I/O (a committed pooled session) ends within the request's loop step",
        "mountaineer_db/requests/session.py",
        "            return asyncio.Task(work, loop=loop, eager_start=True)",
        "            return loop.create_task(work)",
        ("tests/test_handovers.py::test_a_committed_pooled_session_goes_back_within_one_loop_step",),
    ),
    M(
        "client-errors-logged-as-errors",
        "routine bad input (422, 4xx) is logged at INFO, not ERROR",
        "mountaineer_db/requests/failure_log.py",
        "level = logging.ERROR if failure else logging.INFO",
        "level = logging.ERROR",
        ("tests/test_data_errors.py",),
    ),
    M(
        "expire-on-commit",
        "objects stay readable after commit without I/O",
        "mountaineer_db/requests/session.py",
        "AsyncSession(self._bind, expire_on_commit=False,",
        "AsyncSession(self._bind, expire_on_commit=True,",
        ("tests/test_session.py",),
    ),
    M(
        "expunge-before-rollback",
        "what render() returns serializes with every loaded field after the re-render",
        "mountaineer_db/requests/rerender.py",
        "    session.expunge_all()\n    try:",
        "    try:",
        ("tests/test_render_models.py", "tests/test_readme.py"),
    ),
    M(
        "rerender-sharing",
        "an action and its re-render share one session and one connection",
        "mountaineer_db/requests/rerender.py",
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
    M(
        "no-retry-after",
        "a 503 carries Retry-After (1 s; 0 after a schema change)",
        "mountaineer_db/exceptions.py",
        'headers={"Retry-After": str(retry_after)},',
        "headers=None,",
        (
            "tests/faults/test_bad_config.py::test_unavailable_action_answers_503",
            "tests/test_stale_statements.py::test_schema_changed_error_is_a_503_that_keeps_its_message_when_pickled",
        ),
    ),
    # -- connections ----------------------------------------------------------------------------
    M(
        "named-statements",
        "unnamed prepared statements by default (PgBouncer in transaction mode)",
        "mountaineer_db/engines/engine.py",
        "        cache_size = 100 if fixed or pooler else 0",
        "        cache_size = 100",
        ("tests/test_pgbouncer.py::test_default_config_through_pgbouncer_has_zero_errors",),
    ),
    M(
        "session-level-timeouts",
        "server timeouts are SET LOCAL: they never outlive the transaction",
        "mountaineer_db/engines/connections.py",
        'f"; SET LOCAL {name} = ',
        'f"; SET {name} = ',
        ("tests/test_engine.py::test_per_transaction_settings_never_outlive_the_transaction",),
    ),
    M(
        "connect-timeout",
        "connecting is bounded by DATABASE_CONNECT_TIMEOUT",
        "mountaineer_db/engines/connections.py",
        "timeout=max(remaining, 0.001), **self._kwargs",
        "timeout=60, **self._kwargs",
        ("tests/faults/test_timeouts.py::test_connect_timeout_on_a_black_hole",),
    ),
    M(
        "chained-connect-error",
        "connect errors never carry the driver's error (whose frames hold the password)",
        "mountaineer_db/engines/connections.py",
        "            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below\n"
        "                reason = _reason(error, self.location_settings)\n",
        "            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below\n"
        '                raise DatabaseUnavailableError(f"Could not connect: {error}", url=self.url) from error\n',
        ("tests/faults/test_secrets.py",),
    ),
    M(
        "unbounded-close",
        "closing a connection never waits longer than its bound",
        "mountaineer_db/engines/connections.py",
        "await super().close(timeout=self._mdb_close_timeout if timeout is None else timeout)",
        "await super().close(timeout=timeout)",
        ("tests/faults/test_timeouts.py::test_closing_a_connection_on_a_black_hole_is_bounded",),
    ),
    M(
        "no-client-check",
        "a cancelled statement stops on the server, anyio cancel scopes included",
        "mountaineer_db/engines/connections.py",
        "        if self.get_server_version() >= (14,):",
        "        if False:",
        ("tests/faults/test_cancellation.py::test_anyio_cancel_scope_stops_the_statement_on_the_server",),
    ),
    M(
        "socket-host-ignored",
        "a Unix socket given as ?host= is used",
        "mountaineer_db/engines/connections.py",
        '"host": host if isinstance(host, str) else url.host,',
        '"host": url.host,',
        ("tests/test_engine.py::test_a_unix_socket_url_connects",),
    ),
    M(
        "command-timeout-ignored",
        "DATABASE_COMMAND_TIMEOUT bounds every statement",
        "mountaineer_db/engines/connections.py",
        '"command_timeout": config.DATABASE_COMMAND_TIMEOUT,',
        '"command_timeout": None,',
        ("tests/faults/test_timeouts.py::test_command_timeout_on_a_black_hole",),
    ),
    M(
        "sslmode-ignored",
        "POSTGRES_SSLMODE reaches the connection: require encrypts and never falls back",
        "mountaineer_db/engines/connections.py",
        "    if mode in (SSLMode.DISABLE, SSLMode.ALLOW):",
        "    if True:",
        ("tests/test_connections.py",),
    ),
    M(
        "ssl-require-verifies",
        "sslmode=require encrypts without verifying the certificate (libpq's meaning)",
        "mountaineer_db/engines/connections.py",
        "        context.check_hostname = False\n        context.verify_mode = ssl_module.CERT_NONE\n",
        "",
        ("tests/test_connections.py::test_the_sslmode_decides_whether_the_connection_is_encrypted",),
    ),
    M(
        "application-name-ignored",
        "DATABASE_APPLICATION_NAME (default PACKAGE) reaches pg_stat_activity",
        "mountaineer_db/engines/connections.py",
        'server_settings["application_name"] = config.application_name',
        "pass",
        ("tests/test_connections.py::test_the_application_name_reaches_the_server",),
    ),
    M(
        "url-application-name-ignored",
        "an application_name in the URL's query reaches the server",
        "mountaineer_db/engines/connections.py",
        "        if isinstance(app_name, str):\n",
        "        if False:\n",
        ("tests/test_connections.py::test_the_application_name_reaches_the_server",),
    ),
    # -- engines --------------------------------------------------------------------------------
    M(
        "hide-parameters",
        "bound values never appear in logs, SQL echo included",
        "mountaineer_db/engines/engine.py",
        '"hide_parameters": True,',
        '"hide_parameters": False,',
        ("tests/test_session.py::test_bound_values_never_reach_a_log_record_even_with_sql_echo",),
    ),
    M(
        "cache-key-lock-timeout",
        "configs differing in any engine setting get their own engine",
        "mountaineer_db/engines/engine.py",
        '    "DATABASE_LOCK_TIMEOUT",\n',
        "",
        ("tests/test_engine.py::test_configs_differing_only_in_a_timeout_each_get_it_on_the_server",),
    ),
    M(
        "checkout-keeps-dead-connections",
        "a pooled connection the server closed is replaced at checkout",
        "mountaineer_db/engines/engine.py",
        "    if dbapi_connection.driver_connection.is_closed():",
        "    if False:",
        ("tests/faults/test_terminate.py",),
    ),
    M(
        "fork-unprotected",
        "a forked child never closes its parent's connections",
        "mountaineer_db/engines/engine.py",
        "os.register_at_fork(after_in_child=_after_fork_in_child)",
        "pass",
        ("tests/test_lifecycle.py::test_a_forked_child_never_touches_its_parents_connections",),
    ),
    M(
        "no-dispose-at-loop-shutdown",
        "a loop's engines are disposed when the loop shuts down",
        "mountaineer_db/engines/engine.py",
        "                entry.closer.__anext__().send(None)",
        "                pass",
        ("tests/test_lifecycle.py",),
    ),
    M(
        "retired-pool-keeps-connections",
        "connections of a disposed engine are closed when they come back",
        "mountaineer_db/engines/engine.py",
        "        if self.retired and dbapi_connection is not None",
        "        if False and dbapi_connection is not None",
        ("tests/test_lifecycle.py::test_dispose_with_a_session_in_flight_closes_its_connection_when_it_comes_back",),
    ),
    M(
        "pool-size-ignored",
        "DATABASE_POOL_SIZE sizes the FIXED_PROCESS pool",
        "mountaineer_db/engines/engine.py",
        '            ("DATABASE_POOL_SIZE", "pool_size"),\n',
        "",
        ("tests/test_engine.py::test_fixed_process_pool_uses_the_pool_settings",),
    ),
    M(
        "pool-recycle-ignored",
        "DATABASE_POOL_RECYCLE replaces pooled connections older than it",
        "mountaineer_db/engines/engine.py",
        '            ("DATABASE_POOL_RECYCLE", "pool_recycle"),\n',
        "",
        ("tests/test_engine.py::test_fixed_process_replaces_connections_older_than_the_pool_recycle",),
    ),
    M(
        "pool-pre-ping-ignored",
        "DATABASE_POOL_PRE_PING pings a pooled connection at checkout",
        "mountaineer_db/engines/engine.py",
        '            ("DATABASE_POOL_PRE_PING", "pool_pre_ping"),\n',
        "",
        ("tests/test_engine.py::test_fixed_process_pings_a_pooled_connection_at_checkout_with_pool_pre_ping",),
    ),
    M(
        "echo-ignored",
        "DATABASE_ECHO logs every statement (and is off by default)",
        "mountaineer_db/engines/engine.py",
        '"echo": config.DATABASE_ECHO,',
        '"echo": False,',
        ("tests/test_engine.py::test_database_echo_logs_every_statement_and_is_off_by_default",),
    ),
    M(
        "stale-statements",
        "statements cached before a migration are never reused",
        "mountaineer_db/engines/engine.py",
        "    install_stale_statement_recovery(engine)",
        "    pass",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "no-first-statement-replay",
        "after a migration, a stale first statement runs again instead of failing the request",
        "mountaineer_db/requests/session.py",
        "    first_of_request = not session._mdb_connected\n",
        "    return run(*args, **kwargs)\n    first_of_request = not session._mdb_connected\n",
        ("tests/test_stale_statements.py", "tests/test_migrating_while_serving.py"),
    ),
    M(
        "wider-rows-not-stale",
        "rows wider than a cached statement described (PgBouncer prepared it anew) are a stale statement",
        "mountaineer_db/engines/stale_statements.py",
        '        return "is different from what was described" in message',
        "        return False",
        ("tests/test_stale_statements.py::test_rows_wider_than_the_cached_description_are_a_stale_statement",),
    ),
    M(
        "exec-not-replayed",
        "a stale first statement run by SQLModel's `exec` runs again too",
        "mountaineer_db/requests/session.py",
        "        run = super().exec\n        if self.server_transaction_open():",
        "        run = super().exec\n        if True:",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "get-not-replayed",
        "a stale first statement run by `session.get` (through `Session.execute`) runs again too",
        "mountaineer_db/requests/session.py",
        "        run = super().execute\n        if self.server_transaction_open():",
        "        run = super().execute\n        if True:",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "scalars-not-replayed",
        "a stale first statement run by `session.scalars` runs again too",
        "mountaineer_db/requests/session.py",
        "        run = super().scalars\n        if self.server_transaction_open():",
        "        run = super().scalars\n        if True:",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "scalar-not-replayed",
        "a stale first statement run by `session.scalar` runs again too",
        "mountaineer_db/requests/session.py",
        "        run = super().scalar\n        if self.server_transaction_open():",
        "        run = super().scalar\n        if True:",
        ("tests/test_stale_statements.py",),
    ),
    M(
        "replay-drops-unflushed-changes",
        "a first statement with a change not flushed yet (no_autoflush) is never replayed: the change is not dropped",
        "mountaineer_db/requests/session.py",
        "    return session._mdb_flushes != flushes_before or bool("
        "session.new or session.dirty or session.deleted)",
        "    return session._mdb_flushes != flushes_before",
        ("tests/test_failover.py::test_a_statement_after_the_first_or_after_a_commit_is_never_run_again",),
    ),
    M(
        "replay-drops-autoflushed-changes",
        "a first statement whose autoflush sent a change is never replayed: the change is not dropped",
        "mountaineer_db/requests/session.py",
        "    return session._mdb_flushes != flushes_before or bool("
        "session.new or session.dirty or session.deleted)",
        "    return bool(session.new or session.dirty or session.deleted)",
        ("tests/test_failover.py::test_a_statement_after_the_first_or_after_a_commit_is_never_run_again",),
    ),
    M(
        "tenant-listener-never-registered",
        "bind_tenant registers the tenant listener: a bound session's BEGIN carries its tenant",
        "mountaineer_db/engines/tenants.py",
        "    listen_for_tenants()  # before the session's next BEGIN\n",
        "",
        ("tests/test_tenants.py::test_an_app_without_tenants_runs_no_tenant_listener_until_tenancy_is_first_used",),
    ),
    M(
        "stale-error-missed-is-a-500",
        "a stale statement that reaches the session untranslated is replayed or a 503, never a 500",
        "mountaineer_db/requests/session.py",
        "            unavailable = schema_changed_error(stale) if stale is not None else None",
        "            unavailable = None",
        ("tests/test_stale_statements.py::test_a_stale_statement_the_engine_recovery_missed_is_still_replayed_or_a_503",),
    ),
    # -- named statements through PgBouncer >= 1.21 (DATABASE_POOLER_PREPARED_STATEMENTS) -------
    M(
        "pooler-setting-ignored",
        "with DATABASE_POOLER_PREPARED_STATEMENTS, both pool types use named statements through PgBouncer",
        "mountaineer_db/engines/engine.py",
        "    pooler = config.DATABASE_POOLER_PREPARED_STATEMENTS\n",
        "    pooler = False\n",
        ("tests/test_pooler_statements.py::test_through_pgbouncer_124_both_pools_use_named_statements",),
    ),
    M(
        "pooler-null-pool-unnamed",
        "the NULL pool uses the statement cache too when the pooler supports named statements",
        "mountaineer_db/engines/engine.py",
        "        cache_size = 100 if fixed or pooler else 0",
        "        cache_size = 100 if fixed else 0",
        ("tests/test_pooler_statements.py::test_through_pgbouncer_124_both_pools_use_named_statements",),
    ),
    M(
        "pooler-never-checked",
        "against PgBouncer 1.18 or max_prepared_statements = 0, the first request fails naming the setting",
        "mountaineer_db/engines/pooler_statements.py",
        "            if not self.checked:\n                await check_pooler(connection, self.target)\n",
        "",
        (
            "tests/test_pooler_statements.py::test_against_pgbouncer_118_the_first_request_fails_naming_the_setting",
            "tests/test_pooler_statements.py::test_against_pgbouncer_124_with_max_prepared_statements_0_the_first_request_fails",
        ),
    ),
    M(
        "pooler-check-trusts-any-pooler",
        "a pooler that passes named statements through is refused, only a direct connection is trusted",
        "mountaineer_db/engines/pooler_statements.py",
        "    if name in names and all(row[1] == connection.get_server_pid() for row in rows):",
        "    if name in names:",
        ("tests/test_pooler_statements.py::test_against_pgbouncer_118_the_first_request_fails_naming_the_setting",),
    ),
    M(
        "pooler-check-counter-names",
        "against PgBouncer 1.18, every process gets the setting's error, never 'prepared statement already exists'",
        "mountaineer_db/engines/pooler_statements.py",
        '        rows = await lookup.fetch(_PROBE)\n',
        "        rows = await connection.fetch(_FIND_PROBE, _PROBE)\n",
        ("tests/test_pgbouncer.py::test_named_statements_against_pgbouncer_118_fail_clearly_in_every_process",),
    ),
    M(
        "pooler-stale-texts-reused",
        "through PgBouncer 1.24, after a stale statement the engine prepares new texts: only the first request fails",
        "mountaineer_db/engines/pooler_statements.py",
        "        self.stale_events += 1",
        "        pass",
        ("tests/test_pooler_statements.py::test_after_a_schema_change_only_the_first_later_statement_fails",),
    ),
    M(
        "pooler-texts-ignore-the-revision",
        "after `migrate apply` (a new revision), new processes never use the texts left stale on PgBouncer",
        "mountaineer_db/engines/pooler_statements.py",
        "                self.prefix = _prefix(revisions)\n",
        "                self.prefix = _prefix(None)\n",
        (
            "tests/test_pooler_statements.py::test_after_a_migration_a_new_process_never_meets_the_old_statements",
            "tests/test_pooler_statements.py::test_statement_texts_follow_the_migration_revision",
        ),
    ),
    # -- config ---------------------------------------------------------------------------------
    M(
        "password-shown",
        "the password is masked wherever the config is shown",
        "mountaineer_db/settings/urls.py",
        "url.render_as_string(hide_password=True)",
        "url.render_as_string(hide_password=False)",
        ("tests/test_config.py::test_password_is_masked_everywhere_it_is_shown",),
    ),
    M(
        "port-validation",
        "a port outside 1-65535 is refused when the config is built",
        "mountaineer_db/settings/checks.py",
        "        if not 1 <= port <= 65535:",
        "        if False:",
        ("tests/test_config.py::test_invalid_settings_name_the_field_and_the_fix",),
    ),
    M(
        "connect-timeout-default",
        "connecting is bounded by default (DATABASE_CONNECT_TIMEOUT=5)",
        "mountaineer_db/settings/config.py",
        "    DATABASE_CONNECT_TIMEOUT: float = 5.0",
        "    DATABASE_CONNECT_TIMEOUT: float = 60.0",
        ("tests/test_config.py::test_the_documented_defaults",),
    ),
    M(
        "negative-overflow-accepted",
        "a negative DATABASE_MAX_OVERFLOW is refused when the config is built",
        "mountaineer_db/settings/checks.py",
        "config.DATABASE_MAX_OVERFLOW is not None and config.DATABASE_MAX_OVERFLOW < 0:",
        "False:",
        ("tests/test_config.py::test_invalid_settings_name_the_field_and_the_fix",),
    ),
    M(
        "zero-pool-timeout-accepted",
        "a DATABASE_POOL_TIMEOUT of 0 or less is refused when the config is built",
        "mountaineer_db/settings/checks.py",
        '    for name in ("DATABASE_POOL_TIMEOUT", "DATABASE_POOL_RECYCLE"):',
        '    for name in ("DATABASE_POOL_RECYCLE",):',
        ("tests/test_config.py::test_invalid_settings_name_the_field_and_the_fix",),
    ),
    M(
        "negative-cache-size-accepted",
        "a negative DATABASE_STATEMENT_CACHE_SIZE is refused when the config is built",
        "mountaineer_db/settings/checks.py",
        "config.DATABASE_STATEMENT_CACHE_SIZE is not None and config.DATABASE_STATEMENT_CACHE_SIZE < 0:",
        "False:",
        ("tests/test_config.py::test_invalid_settings_name_the_field_and_the_fix",),
    ),
    M(
        "url-normalisation",
        "postgres:// and postgresql:// URLs use the asyncpg driver",
        "mountaineer_db/settings/urls.py",
        '    return url.set(drivername="postgresql+asyncpg")',
        "    return url",
        ("tests/test_config.py::test_url_schemes_normalise_to_asyncpg",),
    ),
    M(
        "copied-url-stale",
        "a copied config's URL follows its parts",
        "mountaineer_db/settings/config.py",
        "        elif self._url_from_parts_:",
        "        elif False:",
        ("tests/test_config.py::test_a_copy_with_other_parts_gets_a_url_that_follows_them",),
    ),
    M(
        "plain-password-shown",
        "a password re-declared as str stays secret",
        "mountaineer_db/settings/config.py",
        '            annotations["POSTGRES_PASSWORD"] = SecretStr | None',
        "            pass",
        ("tests/test_config.py::test_a_password_redeclared_as_str_works_and_stays_masked",),
    ),
    # -- migrations and admin -------------------------------------------------------------------
    M(
        "no-advisory-lock",
        "concurrent `apply` runs apply each revision once",
        "mountaineer_db/migrations/lock.py",
        '_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")',
        '_TRY_LOCK = text("SELECT CAST(:key AS bigint) <> 0")',
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
        "rollback-two-steps",
        "`migrate rollback` without a revision rolls back one step",
        "mountaineer_db/migrations/commands.py",
        "    if revision is None and steps is None:\n        steps = 1",
        "    if revision is None and steps is None:\n        steps = 2",
        ("tests/test_migrations.py::test_full_cycle_through_the_cli",),
    ),
    M(
        "migrations-inherit-statement-timeout",
        "migrations are not cut short by the app's DATABASE_STATEMENT_TIMEOUT",
        "mountaineer_db/migrations/environment.py",
        '            "DATABASE_STATEMENT_TIMEOUT": None,\n',
        "",
        ("tests/test_migration_locks.py::test_migrations_do_not_inherit_the_apps_timeouts",),
    ),
    M(
        "migrations-inherit-command-timeout",
        "migrations are not cut short by the app's DATABASE_COMMAND_TIMEOUT",
        "mountaineer_db/migrations/environment.py",
        '            "DATABASE_COMMAND_TIMEOUT": None,\n',
        "",
        ("tests/test_migration_locks.py::test_migrations_do_not_inherit_the_apps_timeouts",),
    ),
    M(
        "migrations-inherit-idle-timeout",
        "migrations are not cut short by the app's idle-in-transaction timeout",
        "mountaineer_db/migrations/environment.py",
        '            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": None,\n',
        "",
        ("tests/test_migration_locks.py::test_migrations_do_not_inherit_the_apps_timeouts",),
    ),
    M(
        "unquoted-identifiers",
        "database names are quoted identifiers",
        "mountaineer_db/migrations/admin.py",
        "    return '\"' + name.replace('\"', '\"\"') + '\"'",
        "    return name",
        ("tests/test_admin.py",),
    ),
    M(
        "check-ignores-constraint-names",
        "`migrate check` lists primary keys, foreign keys and checks named otherwise in the database",
        "mountaineer_db/migrations/commands.py",
        'found["names"] = name_differences(bind, context.opts["target_metadata"]) if bind is not None else []',
        'found["names"] = []',
        ("tests/test_migration_names.py",),
    ),
    M(
        "apply-on-unadopted-without-advice",
        "`apply` failing on tables that exist says to `migrate stamp`",
        "mountaineer_db/migrations/commands.py",
        "                if isinstance(cause, DBAPIError) and is_adoption_failure(cause, before):",
        "                if False:",
        ("tests/test_migration_stamp.py::test_stamp_adopts_a_database_made_without_migrations",),
    ),
    # -- the development database ------------------------------------------------------------------
    M(
        "embedded-next-to-a-host",
        "DATABASE_EMBEDDED with POSTGRES_HOST or a URL is refused, not quietly sent to that host",
        "mountaineer_db/settings/checks.py",
        "    if not config.DATABASE_EMBEDDED:\n        return []\n    named",
        "    if True:\n        return []\n    named",
        ("tests/test_config_embedded.py",),
    ),
    M(
        "admin-without-embedded",
        "`admin.createdb` starts the development database itself",
        "mountaineer_db/migrations/admin.py",
        "    return ensure_embedded_database(config, apply_migrations=False, create_database=create_database)",
        "    return config",
        ("tests/test_embedded.py::test_admin_starts_the_development_database_itself",),
    ),
    M(
        "requests-need-the-lifespan",
        "without `database_lifespan` the first request starts the development database",
        "mountaineer_db/requests/dependencies.py",
        "    return with_development_database(registered_config())",
        "    return registered_config()",
        ("tests/test_embedded.py::test_without_the_lifespan_the_first_session_starts_the_development_database",),
    ),
    M(
        "createdb-after-the-embedded-start-made-it",
        "`createdb` says `Created` when it made the database",
        "mountaineer_db/cli.py",
        "    config = _load_config(create_database=False)\n    created, missing, stamped",
        "    config = _load_config()\n    created, missing, stamped",
        ("tests/test_embedded.py::test_the_cli_runs_against_the_embedded_database",),
    ),
    M(
        "createdb-says-created-when-the-tables-existed",
        "`createdb --create-tables` says when the models' tables existed already, not that it created them",
        "mountaineer_db/cli.py",
        "        missing = [] if created else await admin.missing_model_tables(config)",
        "        missing = [\"x\"]",
        ("tests/test_embedded.py::test_the_cli_runs_against_the_embedded_database",),
    ),
    M(
        "check-says-apply-to-an-unadopted-database",
        "`migrate check` on a database with the tables but no recorded revision says stamp, not apply",
        "mountaineer_db/migrations/commands.py",
        "        if found[\"unadopted\"]:",
        "        if False:",
        ("tests/test_migration_stamp.py::test_stamp_adopts_a_database_made_without_migrations",),
    ),
    M(
        "failed-development-migration-stops-the-server",
        "a revision failing at the development server's start is logged, and the server goes on",
        "mountaineer_db/migrations/admin.py",
        "    except MigrationError as error:\n        # A revision",
        "    except ZeroDivisionError as error:\n        # A revision",
        ("tests/test_migrations.py::test_the_development_database_logs_a_failing_revision_and_goes_on",),
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
        "mountaineer_db/requests/retries.py",
        '"40P01": "a deadlock"',
        '"40XXX": "a deadlock"',
        ("tests/test_retries.py",),
    ),
    M(
        "retry-wait-unbounded",
        "run_in_transaction never waits more than 1 s between attempts, however many retries",
        "mountaineer_db/requests/retries.py",
        "    ceiling = min(_MAX_DELAY, _FIRST_DELAY * 2 ** (retry - 1))",
        "    ceiling = _FIRST_DELAY * 2 ** (retry - 1)",
        ("tests/test_retries.py::test_waits_double_from_25_ms_and_never_exceed_one_second_however_many_retries",),
    ),
    M(
        "get-or-404-returns-none",
        "get_or_404 raises ResourceNotFoundError for a missing row",
        "mountaineer_db/requests/http_errors.py",
        "    instance = await session.get(",
        "    return await session.get(  # type: ignore[return-value]",
        ("tests/test_http_errors.py",),
    ),
    M(
        "get-or-404-ignores-for-update",
        "get_or_404(..., with_for_update=True) locks the row (SELECT ... FOR UPDATE)",
        "mountaineer_db/requests/http_errors.py",
        "populate_existing=populate_existing, with_for_update=with_for_update or None",
        "populate_existing=populate_existing",
        ("tests/test_http_errors.py::test_get_or_404_with_for_update_locks_the_row_until_the_transaction_ends",),
    ),
    M(
        "unique-violation-not-409",
        "a unique violation becomes ResourceAlreadyExistsError (409), naming the constraint",
        "mountaineer_db/requests/http_errors.py",
        "        if code in (UNIQUE_VIOLATION, FOREIGN_KEY_VIOLATION):",
        "        if code == FOREIGN_KEY_VIOLATION:",
        ("tests/test_http_errors.py",),
    ),
    # -- after-commit hooks ---------------------------------------------------------------------
    M(
        "on-commit-runs-after-rollback",
        "on_commit hooks are dropped when their transaction rolls back",
        "mountaineer_db/requests/commit_hooks.py",
        "    if not committed:\n        logger.debug(",
        "    if False:\n        logger.debug(",
        ("tests/test_commit_hooks.py",),
    ),
    M(
        "robust-hook-stops-the-rest",
        "a robust hook's failure is logged and the remaining hooks still run",
        "mountaineer_db/requests/commit_hooks.py",
        "            if not hook.robust:\n                raise",
        "            if True:\n                raise",
        ("tests/test_commit_hooks.py",),
    ),
    M(
        "released-hooks-skip-outer-savepoint",
        "a released savepoint's hooks join the enclosing savepoint, and are dropped if that one rolls back",
        "mountaineer_db/requests/commit_hooks.py",
        "    while parent is not None and not parent.nested and parent.parent is not None:",
        "    while parent is not None and parent.parent is not None:",
        (
            "tests/test_commit_hooks.py::"
            "test_a_released_savepoints_hooks_are_dropped_when_the_enclosing_savepoint_rolls_back",
        ),
    ),
    # -- operations -----------------------------------------------------------------------------
    M(
        "scram-cache-ignores-password",
        "the SCRAM cache is keyed by the password too: a wrong password never authenticates",
        "mountaineer_db/engines/scram.py",
        "str(iterations).encode(), salt, password)",
        "str(iterations).encode(), salt)",
        ("tests/test_scram.py",),
    ),
    M(
        "scram-cache-ignores-salt",
        "the SCRAM cache is keyed by the salt: a new salt derives again",
        "mountaineer_db/engines/scram.py",
        "str(iterations).encode(), salt, password)",
        "str(iterations).encode(), password)",
        ("tests/test_scram.py",),
    ),
    M(
        "scram-cache-unbounded",
        "the SCRAM cache holds at most 64 entries, the least recently used dropped first",
        "mountaineer_db/engines/scram.py",
        "            while len(self._entries) > _MAX_ENTRIES:\n                self._entries.popitem(last=False)\n",
        "",
        ("tests/test_scram.py::test_the_cache_holds_at_most_its_bound_dropping_the_least_recently_used",),
    ),
    M(
        "scram-cache-kept-at-dispose",
        "dispose_engines() empties the SCRAM cache",
        "mountaineer_db/engines/engine.py",
        "    clear_scram_cache()\n",
        "",
        ("tests/test_scram.py::test_direct_connections_derive_the_key_once_and_cache_exactly_hashlibs_value",),
    ),
    M(
        "tag-outlives-transaction",
        "a request's tag (application_name) is SET LOCAL: it never outlives its transaction",
        "mountaineer_db/engines/origins.py",
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
        "mountaineer_db/engines/slow_queries.py",
        "            if elapsed > threshold:\n                _log(elapsed, threshold, statement, None)",
        "            if elapsed > threshold * 1000:\n                _log(elapsed, threshold, statement, None)",
        ("tests/test_slow_queries.py",),
    ),
    M(
        "slow-statement-not-cut",
        "the slow-query log shows a statement on one line, cut at 2,000 characters",
        "mountaineer_db/engines/slow_queries.py",
        "MAX_STATEMENT_CHARS: Final = 2000",
        "MAX_STATEMENT_CHARS: Final = 20000",
        ("tests/test_slow_queries.py::test_a_long_statement_is_logged_on_one_line_cut_at_2000_characters",),
    ),
    M(
        "num-queries-counts-savepoints",
        "assert_num_queries counts the app's statements, not the kit's savepoints",
        "mountaineer_db/testing/queries.py",
        "        if not self.watches(conn, context) or _BOOKKEEPING.match(statement):\n",
        "        if not self.watches(conn, context):\n",
        ("tests/testing/test_queries.py",),
    ),
    M(
        "pool-waiters-lifo",
        "pool waiters get connections in arrival order (FIXED_PROCESS tail latency)",
        "mountaineer_db/engines/fair_pool.py",
        "            waiter, _ = self._waiters.popleft()",
        "            waiter, _ = self._waiters.pop()",
        ("tests/test_fair_pool.py",),
    ),
    M(
        "health-ignores-pending-migrations",
        "check_database reports a database behind the code's migrations as not ready",
        "mountaineer_db/observability/health.py",
        "    if heads is None or found is None or set(found) == set(heads.heads):",
        "    if True:",
        ("tests/example_app/test_readiness.py",),
    ),
    M(
        "health-via-migrations-url",
        "check_database goes the app's own way, never through MIGRATIONS_DATABASE_URI",
        "mountaineer_db/observability/health.py",
        "        engine = engine_for(config)\n",
        "        engine = engine_for(config, url=config.migrations_url)\n",
        ("tests/test_health.py::test_it_never_goes_through_the_migrations_url",),
    ),
    M(
        "health-unbounded",
        "check_database answers within DATABASE_CONNECT_TIMEOUT, even when queries hang",
        "mountaineer_db/observability/health.py",
        "    async with asyncio.timeout(timeout):\n        return await _probe(",
        "    async with asyncio.timeout(None):\n        return await _probe(",
        (
            "tests/test_health.py::test_a_database_that_accepts_but_never_answers_is_reported_within_the_connect_timeout",
        ),
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
    M(
        "lock-wait-in-transaction",
        "waiting for the migration lock holds no transaction, so the holder's CREATE INDEX CONCURRENTLY completes",
        "mountaineer_db/migrations/lock.py",
        '    while not await connection.scalar(_TRY_LOCK, {"key": MIGRATION_LOCK_KEY}):\n',
        # The old way: pg_advisory_lock inside a transaction (lock_timeout lifted for the wait).
        "    await connection.commit()\n"
        "    await connection.execution_options(isolation_level=connection.default_isolation_level)\n"
        '    await connection.execute(text("SET LOCAL lock_timeout = 0"))\n'
        '    await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})\n'
        "    while False:\n",
        (
            "tests/test_migration_lock_waits.py::"
            "test_a_waiting_apply_holds_nothing_so_the_holders_concurrent_index_completes",
            "tests/test_concurrent_deploys.py",
        ),
    ),
    M(
        "no-fast-path-at-head",
        "`apply` on a database already at head returns at once, without waiting for the migration lock",
        "mountaineer_db/migrations/commands.py",
        "on_connection(config, work, lock=True, unless=fast_path)",
        "on_connection(config, work, lock=True, unless=None)",
        ("tests/test_migration_lock_waits.py::test_at_head_apply_returns_at_once_without_waiting_for_the_lock",),
    ),
    M(
        "invalid-index-kept",
        "`apply` drops an INVALID index left by a failed build before building it again",
        "mountaineer_db/migrations/autocommit.py",
        "        if found is None or found.valid or found.building:\n            return\n        logger.warning(",
        "        if True:\n            return\n        logger.warning(",
        (
            "tests/test_invalid_indexes.py::"
            "test_a_failed_concurrent_index_is_named_with_its_fix_and_the_next_apply_rebuilds_it",
        ),
    ),
    M(
        "killed-holder-keeps-building",
        "a killed `apply` stops its index build on the server and releases the lock within a second",
        "mountaineer_db/migrations/lock.py",
        ">= (14,):",
        ">= (99,):",
        ("tests/test_invalid_indexes.py::test_a_leader_killed_mid_concurrently_is_recovered_by_the_next_apply",),
    ),
    M(
        "claims-rolled-back",
        "a failure says \"rolled back\" only when it was",
        "mountaineer_db/migrations/autocommit.py",
        "        if self.failed_outside:\n",
        "        if False:\n",
        (
            "tests/test_invalid_indexes.py::"
            "test_a_failed_concurrent_index_is_named_with_its_fix_and_the_next_apply_rebuilds_it",
        ),
    ),
    # -- read replicas --------------------------------------------------------------------------
    M(
        "read-session-writable",
        "read sessions are read-only: a write fails clearly, on a replica or on the primary",
        "mountaineer_db/requests/read_sessions.py",
        "connection.execution_options(postgresql_readonly=True,",
        "connection.execution_options(postgresql_readonly=False,",
        ("tests/test_replicas.py::test_a_write_on_a_read_session_fails_clearly",),
    ),
    M(
        "lagging-replica-used",
        "a replica more than DATABASE_REPLICA_MAX_LAG behind is skipped",
        "mountaineer_db/replicas/replica_set.py",
        "            if not health.standby or health.lag > self.max_lag:",
        "            if not health.standby:",
        ("tests/test_replicas.py::test_a_lagging_replica_is_skipped_for_everyone_until_it_catches_up",),
    ),
    M(
        "max-wait-unbounded",
        "a read waits at most DATABASE_REPLICA_MAX_WAIT for a replica, then reads the primary",
        "mountaineer_db/replicas/replica_set.py",
        "        deadline = time.monotonic() + self.max_wait",
        "        deadline = time.monotonic() + 3600",
        ("tests/test_replicas.py::test_a_read_waits_no_longer_than_the_max_wait_then_reads_its_write_on_the_primary",),
    ),
    M(
        "forged-cookie-trusted",
        "a read-your-writes cookie we did not sign is ignored",
        "mountaineer_db/replicas/read_your_writes.py",
        "        if not any(hmac.compare_digest(",
        "        if False and not any(hmac.compare_digest(",
        ("tests/test_read_your_writes.py", "tests/test_replicas.py::test_a_forged_cookie_is_ignored"),
    ),
    # -- cancellation, retries and replays (issue 31) -------------------------------------------
    M(
        "pool-handover-full",
        "a pool waiter cancelled after its hand-over gives the connection back even when the pool is full",
        "mountaineer_db/engines/fair_pool.py",
        "            queue.return_unused = self._do_return_conn",
        "            pass",
        (
            "tests/test_fair_pool.py::test_a_waiter_cancelled_after_its_hand_over_while_another_connection_comes_back_strands_nothing",
            "tests/test_handovers.py::test_the_disconnect_guard_cancelling_right_after_a_hand_over_strands_nothing",
        ),
    ),
    M(
        "waiters-expire-together",
        "each pool waiter gives up at its own deadline (DATABASE_POOL_TIMEOUT), not at the first waiter's",
        "mountaineer_db/engines/fair_pool.py",
        "            if deadline <= now:",
        "            if True:",
        ("tests/test_fair_pool.py::test_each_waiter_gives_up_at_its_own_deadline_with_one_timer_for_the_line",),
    ),
    M(
        "pool-handover-lost",
        "a connection handed to a pool waiter cancelled before it ran is never lost",
        "mountaineer_db/engines/fair_pool.py",
        "                self.return_unused(waiter.result())",
        "                pass",
        ("tests/test_fair_pool.py",),
    ),
    M(
        "isolation-first-transaction-only",
        "run_in_transaction's isolation level holds for every transaction of the attempt",
        "mountaineer_db/requests/retries.py",
        "        async with session_scope(engine, execution_options=options) as session:\n",
        "        async with session_scope(engine) as session:\n"
        "            if options is not None:\n"
        "                await session.connection(execution_options=options)\n",
        ("tests/test_retries.py::test_every_transaction_of_an_attempt_runs_at_the_isolation_level",),
    ),
    M(
        "replay-drops-hooks",
        "on_commit hooks registered before a replayed first statement still run at the commit",
        "mountaineer_db/requests/session.py",
        "    with hooks_carried_over(session):",
        "    if True:",
        (
            "tests/test_stale_statements.py::test_an_on_commit_hook_registered_before_a_replayed_first_statement_still_runs",
        ),
    ),
    M(
        "replica-read-cancel-strands",
        "a read cancelled while it picks its replica gives the replica connection back",
        "mountaineer_db/requests/read_sessions.py",
        "        except BaseException as error:\n            # Could not begin",
        "        except Exception as error:\n            # Could not begin",
        ("tests/test_replicas.py::test_a_read_cancelled_while_it_picks_its_replica_gives_the_connection_back",),
    ),
    M(
        "probe-pools-interrupted-connection",
        "a replica probe interrupted mid-statement drops its connection instead of pooling it",
        "mountaineer_db/replicas/replica_set.py",
        "                    driver.terminate()\n                    raw.invalidate()\n",
        "",
        ("tests/test_replicas.py::test_a_replica_probe_cancelled_while_it_reads_the_status_gives_its_connection_back",),
    ),
    M(
        "row-lock-is-a-change",
        "an action that only locked rows gets no 'uncommitted changes' warning",
        "mountaineer_db/requests/rerender.py",
        "AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')",
        "AND l.mode NOT IN ('AccessShareLock')",
        (
            "tests/test_request_session.py::test_an_action_that_only_locks_rows_gets_no_warning_and_one_that_writes_in_sql_does",
        ),
    ),
    M(
        "sql-write-unseen",
        "an action's uncommitted SQL write is rolled back with a warning",
        "mountaineer_db/requests/rerender.py",
        '"SELECT CASE WHEN txid_current_if_assigned() IS NULL THEN false ELSE EXISTS ("',
        '"SELECT CASE WHEN true THEN false ELSE EXISTS ("',
        (
            "tests/test_request_session.py::test_an_action_that_only_locks_rows_gets_no_warning_and_one_that_writes_in_sql_does",
        ),
    ),
    M(
        "cleanup-not-shielded-at-handover",
        "a cancellation pending as a session's cleanup starts lets the cleanup finish",
        "mountaineer_db/requests/session.py",
        "    cancelled: asyncio.CancelledError | None = None\n    try:\n        await asyncio.shield(task)\n",
        "    cancelled: asyncio.CancelledError | None = None\n    try:\n        await task\n",
        ("tests/test_handovers.py::test_a_cancellation_pending_as_the_cleanup_starts_lets_the_cleanup_finish",),
    ),
    M(
        "cookie-never-secure",
        "the read-your-writes cookie is Secure over HTTPS (and HttpOnly, SameSite=Lax)",
        "mountaineer_db/replicas/read_your_writes.py",
        '        secure = self.request is not None and self.request.url.scheme in ("https", "wss")',
        "        secure = False",
        ("tests/test_read_your_writes.py::test_the_cookie_is_httponly_samesite_lax_and_secure_over_https",),
    ),
    # -- hostile input, secrets on disk, probes (issue 23) --------------------------------------
    M(
        "data-exception-is-a-500",
        "a value the database cannot take is a 422 naming the kind of problem",
        "mountaineer_db/requests/session.py",
        "invalid = invalid_input_error_for(error) if unavailable is None else None",
        "invalid = None",
        ("tests/test_data_errors.py", "tests/test_hostile_input.py"),
    ),
    M(
        "driver-message-with-the-value-logged",
        "no value a client sent reaches a log line (asyncpg quotes arguments it cannot encode)",
        "mountaineer_db/engines/data_errors.py",
        '        return f"invalid input for query argument {argument}: {_argument_reason(driver)}"',
        "        return str(driver)",
        ("tests/test_data_errors.py",),
    ),
    M(
        "server-data-exception-text-logged",
        "no value a client sent reaches a log line (PostgreSQL quotes values in class 22 messages)",
        "mountaineer_db/engines/data_errors.py",
        "    if code is not None and code.startswith(DATA_EXCEPTION_CLASS):",
        "    if False:",
        ("tests/test_data_errors.py",),
    ),
    M(
        "get-or-404-with-an-impossible-key",
        "a lookup by a key no row can have is a 404",
        "mountaineer_db/requests/http_errors.py",
        "        if invalid_input_error_for(error) is None:\n            raise",
        "        raise",
        ("tests/test_data_errors.py::test_a_lookup_by_an_id_past_the_columns_range_is_a_404",),
    ),
    M(
        "rollback-line-without-a-transaction",
        "our rollback line only when there was a transaction to roll back",
        "mountaineer_db/requests/failure_log.py",
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
        "mountaineer_db/observability/health.py",
        "    probe = _in_flight.get(key)",
        "    probe = None",
        ("tests/test_health.py",),
    ),
    M(
        "readiness-details-public",
        "the readiness JSON shows anyone no host, port, database, login or server text",
        "mountaineer_db/observability/health.py",
        "    def as_dict(self, *, details: bool = False)",
        "    def as_dict(self, *, details: bool = True)",
        ("tests/test_health.py", "tests/example_app/test_readiness.py"),
    ),
    M(
        "cookie-key-from-the-password",
        "the read-your-writes key is never derived from the database password",
        "mountaineer_db/replicas/read_your_writes.py",
        "    keys = cookie_keys(config)\n    if keys:",
        "    keys = cookie_keys(config) or [config.database_url.render_as_string(hide_password=False)]\n    if keys:",
        ("tests/test_read_your_writes.py",),
    ),
    M(
        "production-without-cookie-keys",
        "production with replicas refuses to start without read-your-writes keys",
        "mountaineer_db/settings/checks.py",
        '    if config.DATABASE_REPLICA_URLS and not keys and deploy_environment(config) == "production":',
        "    if False:",
        ("tests/test_read_your_writes.py",),
    ),
    M(
        "engine-url-keeps-the-password",
        "engine.url holds no password",
        "mountaineer_db/engines/engine.py",
        "create_async_engine(without_password(url), **kwargs)",
        "create_async_engine(url.set(password=None), **kwargs)",
        ("tests/test_engine.py::test_the_engine_url_holds_no_password_yet_the_engine_logs_in",),
    ),
    M(
        "initdb-password-file-named",
        "initdb's password file is private and in no folder, even after SIGKILL",
        "mountaineer_db/servers/cluster.py",
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
        "mountaineer_db/servers/_processes.py",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)",
        ("tests/test_secrets_on_disk.py",),
    ),
    M(
        "userlist-takes-a-line-break",
        "a password PgBouncer's user list cannot hold is a clear error",
        "mountaineer_db/servers/pgbouncer.py",
        '            if any(character in text for character in "\\n\\r\\x00"):',
        "            if False:",
        ("tests/test_secrets_on_disk.py::test_a_password_the_files_cannot_hold_is_a_clear_error",),
    ),
    M(
        "infinite-timeouts-accepted",
        "inf and nan timeouts are refused when the config is built",
        "mountaineer_db/settings/checks.py",
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
    # -- tenants (row-level security, docs/tenants.md) ---------------------------------------------
    M(
        "tenant-once-per-session",
        "the tenant is re-sent with the BEGIN of every transaction of a session, not only the first",
        "mountaineer_db/engines/tenants.py",
        "        state.staged = tenant  # None too",
        '        state.staged = None if session.info.get("mdb_sent") else tenant\n'
        '        session.info["mdb_sent"] = True  # None too',
        (
            "tests/test_tenants.py::test_every_transaction_of_a_request_serves_its_tenant_only",
            "tests/test_tenants.py::test_run_in_transaction_keeps_the_tenant_on_every_attempt",
        ),
    ),
    M(
        "untenanted-begin-sends-nothing",
        "a transaction without a tenant sets the setting to '' (a value left on a server connection never leaks)",
        "mountaineer_db/engines/tenants.py",
        "        if tenant is None:\n            return self.empty",
        '        if tenant is None:\n            return ""',
        (
            "tests/test_tenants.py::test_a_pooled_connection_never_hands_its_tenant_to_the_next_session",
            "tests/test_tenants.py::test_interleaved_tenants_through_pgbouncer_never_see_each_other[NULL]",
        ),
    ),
    M(
        "for-tenant-fails-open",
        "a tenant dependency returning None is a 403 before any I/O",
        "mountaineer_db/requests/dependencies.py",
        "        bind_tenant(session, tenant, config)  # no I/O",
        "        if tenant is not None:\n            bind_tenant(session, tenant, config)  # no I/O",
        (
            "tests/test_tenants.py::test_no_tenant_is_a_403_before_any_io",
            "tests/test_tenants.py::test_interleaved_tenants_through_pgbouncer_never_see_each_other[FIXED_PROCESS]",
        ),
    ),
    M(
        "staged-tenant-kept-on-checkin",
        "a tenant staged but never sent is forgotten when the connection goes back to its pool",
        "mountaineer_db/engines/engine.py",
        '        event.listen(engine.sync_engine.pool, "checkin", forget_on_checkin)',
        "        pass",
        ("tests/test_tenants.py::test_a_staged_tenant_never_reaches_a_transaction_outside_a_session",),
    ),
    M(
        "tenant-switch-mid-request",
        "a session serves one tenant: the re-render cannot switch it",
        "mountaineer_db/engines/tenants.py",
        "    if current is not None and current != value:",
        "    if False:",
        ("tests/test_tenants.py::test_a_session_serves_one_tenant",),
    ),
    M(
        "savepoint-skips-tenant",
        "each savepoint of the kit's session sets the tenant again (a rolled-back savepoint took it away)",
        "mountaineer_db/engines/tenants.py",
        "    if not connection.in_nested_transaction() and state.sent == tenant:",
        "    if state.sent == tenant:",
        ("tests/test_tenants.py::test_the_kits_rollback_session_serves_the_tenant_given_by_use_tenant",),
    ),
    M(
        "tenant-sent-apart-from-begin",
        "the tenant rides on BEGIN: no extra round trip",
        "mountaineer_db/engines/tenants.py",
        "    if driver is None or not driver.is_in_transaction():\n        state.staged",
        "    if False:\n        state.staged",
        ("tests/test_tenants.py::test_the_tenant_costs_no_round_trip",),
    ),
    M(
        "tenant-quote-unescaped",
        "a tenant id with a quote is sent as one SQL string",
        "mountaineer_db/engines/tenants.py",
        """    return "'" + text.replace("'", "''") + "'"
""",
        """    return "'" + text + "'"
""",
        ("tests/test_tenants.py::test_quotes_ints_and_uuids_reach_the_server_as_text",),
    ),
    M(
        "bypass-not-tagged",
        "ALL_TENANTS shows as <app>:all-tenants in pg_stat_activity",
        "mountaineer_db/engines/tenants.py",
        '            f"{application_name_suffix(self.tag_prefix, label)}"',
        '            ""',
        ("tests/test_tenants.py::test_all_tenants_is_the_named_bypass_and_shows_in_pg_stat_activity",),
    ),
    M(
        "replica-begin-without-tenant",
        "a read on a replica carries the tenant on the BEGIN sent when the replica is picked",
        "mountaineer_db/requests/read_sessions.py",
        "            stage_for(session, connection)",
        "            pass",
        ("tests/test_tenant_replicas.py::test_the_tenant_costs_no_round_trip_on_a_replica",),
    ),
    M(
        "createdb-sends-a-nul",
        "createdb and dropdb refuse a name with a NUL before any statement",
        "mountaineer_db/migrations/admin.py",
        '    if "\\x00" in name:\n        raise ConfigurationError(\n            "The database name holds',
        '    if False:\n        raise ConfigurationError(\n            "The database name holds',
        ("tests/test_admin.py::test_names_postgresql_cannot_take_are_refused_before_any_statement",),
    ),
    # -- lazy loads and N+1 queries (docs/loading.md) -----------------------------------------------
    M(
        "lazy-load-error-without-the-fix",
        "a lazy load's error names the fix: selectinload in the query, or session.refresh",
        "mountaineer_db/requests/lazy_loads.py",
        'f"Load it in the query: select({model}).options(selectinload({model}.{attribute})), or for one object "',
        'f"Load it in the query, or for one object "',
        ("tests/test_lazy_loads.py::test_a_many_to_one_read_in_render_names_the_model_attribute_controller_and_fix",),
    ),
    M(
        "lazy-load-error-drops-its-cause",
        "SQLAlchemy's MissingGreenlet stays as the LazyLoadError's cause",
        "mountaineer_db/requests/lazy_loads.py",
        "    raise lazy_load_error(model, attribute, mode, from_identity_map=False) from _missing_greenlet()",
        "    raise lazy_load_error(model, attribute, mode, from_identity_map=False) from None",
        ("tests/test_lazy_loads.py::test_a_one_to_many_read_in_an_action_names_the_action",),
    ),
    M(
        "lazy-load-error-without-the-controller",
        "a lazy load's error names the controller and action",
        "mountaineer_db/requests/lazy_loads.py",
        "    origin = origin if origin is not None else current_origin()\n    message",
        "    origin = None\n    message",
        ("tests/test_lazy_loads.py::test_a_many_to_one_read_in_an_action_names_the_action",),
    ),
    M(
        "lazy-load-stays-missing-greenlet",
        "a lazy load from async code in a request session is a LazyLoadError, not MissingGreenlet",
        "mountaineer_db/requests/lazy_loads.py",
        "    if parent is None:\n        return\n    model, attribute = _names(parent, state)",
        "    if True:\n        return\n    model, attribute = _names(parent, state)",
        ("tests/test_lazy_loads.py::test_a_one_to_many_read_in_render_names_the_model_attribute_controller_and_fix",),
    ),
    M(
        "lazy-load-check-never-added",
        "a lazy load from async code gets the check before any I/O (`LazyLoadCheckedSession.execute`)",
        "mountaineer_db/requests/lazy_loads.py",
        "        if not in_greenlet() and _mode.get() is not None",
        "        if False and _mode.get() is not None",
        ("tests/test_lazy_loads.py::test_a_one_to_many_read_in_render_names_the_model_attribute_controller_and_fix",),
    ),
    M(
        "requests-not-checked",
        "request sessions check lazy loads as the engine's config says (get_db_session)",
        "mountaineer_db/requests/dependencies.py",
        "        self._checked = checked(checks) if checks is not None else None\n        # The guard",
        "        self._checked = None\n        # The guard",
        ("tests/test_lazy_loads.py::test_a_many_to_one_read_in_render_names_the_model_attribute_controller_and_fix",),
    ),
    M(
        "read-requests-not-checked",
        "read sessions check lazy loads as the engine's config says (get_db_read_session)",
        "mountaineer_db/requests/dependencies.py",
        "        self._checked = checked(checks) if checks is not None else None\n\n"
        "    async def __aenter__(self) -> None:",
        "        self._checked = None\n\n    async def __aenter__(self) -> None:",
        ("tests/test_lazy_loads.py::test_a_read_session_explains_its_lazy_loads_too",),
    ),
    M(
        "disconnect-not-watched",
        "a client that disconnects mid-action cancels the action's database work (get_db_session)",
        "mountaineer_db/requests/dependencies.py",
        "        if self._guard is not None:\n            self._guard.watch(session)",
        "        pass",
        (
            "tests/faults/test_cancellation.py::test_client_disconnect_cancels_the_request",
            "tests/test_handovers.py::test_the_disconnect_guard_cancelling_right_after_a_hand_over_strands_nothing",
        ),
    ),
    M(
        "disconnect-leaves-as-a-cancellation",
        "the disconnect guard's own cancellation leaves the request as a 499, not a cancelled task",
        "mountaineer_db/requests/dependencies.py",
        "                    if disconnected is not None:",
        "                    if False:",
        ("tests/test_handovers.py::test_the_disconnect_guard_cancelling_right_after_a_hand_over_strands_nothing",),
    ),
    M(
        "setup-page-misses-the-request-scope",
        "a missing table answers with the set-up page naming the fix (what the session's exit raised is seen)",
        "mountaineer_db/requests/dependencies.py",
        "            except BaseException as raised:\n                outcome = raised\n",
        "            except BaseException as raised:\n",
        ("tests/test_setup_errors.py",),
    ),
    M(
        "raise-lets-identity-map-loads-through",
        "DATABASE_LAZY_LOADS=raise fails a many-to-one the identity map would have answered",
        "mountaineer_db/requests/lazy_loads.py",
        "            return found\n        raise lazy_load_error(model, attribute, mode, from_identity_map=True)",
        "            return found\n        return found",
        ("tests/test_lazy_loads.py::test_raise_fails_a_load_that_would_have_worked_from_the_identity_map",),
    ),
    M(
        "warn-logs-every-time",
        "DATABASE_LAZY_LOADS=warn logs once per model, attribute and origin",
        "mountaineer_db/requests/lazy_loads.py",
        "    if count_lazy_load(model, attribute, origin) == 1:",
        "    if count_lazy_load(model, attribute, origin) >= 1:",
        ("tests/test_lazy_loads.py::test_warn_lets_an_identity_map_load_run_and_logs_it_once_with_a_counter",),
    ),
    M(
        "warn-counter-not-kept",
        "warn-mode lazy loads are counted (loading_metrics, Prometheus)",
        "mountaineer_db/engines/loading_metrics.py",
        "    total = _lazy_loads[key] = _lazy_loads.get(key, 0) + 1",
        "    total = _lazy_loads.get(key, 0) + 1",
        ("tests/test_lazy_loads.py::test_warn_still_explains_a_load_that_cannot_run",),
    ),
    M(
        "production-defaults-to-raise",
        "DATABASE_LAZY_LOADS defaults to warn with ENVIRONMENT=production",
        "mountaineer_db/settings/config.py",
        'return LazyLoads.WARN if deploy_environment(self) == "production" else LazyLoads.RAISE',
        "return LazyLoads.RAISE",
        ("tests/test_lazy_loads.py::test_production_defaults_to_warn",),
    ),
    M(
        "allow-still-checks",
        "DATABASE_LAZY_LOADS=allow keeps SQLAlchemy's behaviour and installs nothing",
        "mountaineer_db/engines/request_checks.py",
        "    if checks.lazy_loads is LazyLoads.ALLOW and checks.n_plus_one_threshold is None:\n        return\n",
        "",
        (
            "tests/test_lazy_loads.py::test_allow_keeps_sqlalchemys_behaviour",
            "tests/test_n_plus_one.py::test_off_means_nothing_installed",
        ),
    ),
    M(
        "kit-follows-environment",
        "the test kit raises on lazy loads unless DATABASE_LAZY_LOADS is set",
        "mountaineer_db/requests/lazy_loads.py",
        "    mode = checks.lazy_loads if checks.lazy_loads_set or not kit else LazyLoads.RAISE",
        "    mode = checks.lazy_loads",
        ("tests/test_n_plus_one.py::test_the_kit_raises_on_lazy_loads_even_where_production_would_warn",),
    ),
    M(
        "n-plus-one-at-the-threshold",
        "an N+1 warning needs more runs than DATABASE_N_PLUS_ONE_THRESHOLD",
        "mountaineer_db/engines/n_plus_one.py",
        "    return [(shape, count) for shape, count in shapes.most_common() if count > threshold]",
        "    return [(shape, count) for shape, count in shapes.most_common() if count > threshold + 1]",
        ("tests/test_n_plus_one.py::test_a_statement_repeated_past_the_threshold_in_a_render_logs_one_warning",),
    ),
    M(
        "n-plus-one-never-reported",
        "a request that repeats a statement past the threshold logs a warning",
        "mountaineer_db/engines/n_plus_one.py",
        "                _counts.reset(self._token)\n        self.report()",
        "                _counts.reset(self._token)",
        ("tests/test_n_plus_one.py::test_an_action_is_named_and_its_rerender_counted_apart",),
    ),
    M(
        "n-plus-one-rerender-added-to-the-action",
        "the re-render after a @sideeffect is counted apart from its action",
        "mountaineer_db/requests/dependencies.py",
        "    with work_origin(request_origin(request)), checked(checks) if checks is not None else contextlib.null",
        "    with work_origin(request_origin(request)), contextlib.null",
        ("tests/test_n_plus_one.py::test_an_action_and_its_rerender_running_the_same_statements_once_each_is_no_n_plus_one",),
    ),
    M(
        "n-plus-one-shape-keeps-list-lengths",
        "an IN list is one statement shape whatever its length",
        "mountaineer_db/engines/n_plus_one.py",
        '    return _LIST.sub("$n", shape)',
        "    return shape",
        ("tests/test_n_plus_one.py::test_statement_shapes_ignore_values_and_list_lengths",),
    ),
    M(
        "assert-no-n-plus-one-never-fails",
        "assert_no_n_plus_one() fails on a statement repeated for one controller action",
        "mountaineer_db/testing/n_plus_one.py",
        "    repeated = recorder.log.repeated(threshold)\n    if repeated:",
        "    repeated = recorder.log.repeated(threshold)\n    if False:",
        ("tests/test_n_plus_one.py::test_the_kit_assertion_fails_on_an_n_plus_one_naming_the_statement_count_and_controller",),
    ),
    M(
        "assert-no-n-plus-one-ignores-origins",
        "assert_no_n_plus_one() counts an action and its re-render apart",
        "mountaineer_db/testing/n_plus_one.py",
        "            counts = self.log.counts.setdefault(current_origin(), {})",
        "            counts = self.log.counts.setdefault(None, {})",
        ("tests/test_n_plus_one.py::test_the_kit_groups_by_action_so_an_action_and_its_rerender_do_not_add_up",),
    ),
    # -- failover: lost connections, demoted primaries, multi-host URLs (issue 29) ----------------
    M(
        "lost-first-statement-not-replayed",
        "a request whose first statement lost its connection runs it once more and succeeds",
        "mountaineer_db/requests/session.py",
        "        if first_of_request and is_lost_connection(error):",
        "        if False and first_of_request and is_lost_connection(error):",
        ("tests/test_failover.py::test_a_request_whose_first_statement_lost_its_connection_runs_it_once_more_and_succeeds",),
    ),
    M(
        "lost-statement-replayed-after-a-commit",
        "a lost statement after a commit (or after the first) is never run again",
        "mountaineer_db/requests/session.py",
        "    first_of_request = not session._mdb_connected",
        "    first_of_request = True",
        ("tests/test_failover.py::test_a_statement_after_the_first_or_after_a_commit_is_never_run_again",),
    ),
    M(
        "lost-first-statement-replayed-twice",
        "the first statement is run again once only",
        "mountaineer_db/requests/session.py",
        "        for instance in kept:\n            session.add(instance)\n    return run(*args, **kwargs)",
        "        for instance in kept:\n            session.add(instance)\n    try:\n"
        "        return run(*args, **kwargs)\n    except Exception:\n"
        "        session.rollback()\n        return run(*args, **kwargs)",
        ("tests/test_failover.py::test_the_first_statement_is_run_again_once_only",),
    ),
    M(
        "demoted-primary-is-a-500",
        "SQLSTATE 25006 on the primary's engine is the documented 503 with Retry-After",
        "mountaineer_db/engines/failover.py",
        "    return PrimaryDemotedError(message)",
        "    return None",
        ("tests/test_failover.py::test_a_read_only_answer_on_the_primary_is_a_503_and_the_pool_is_replaced",),
    ),
    M(
        "demoted-primary-pool-kept",
        "after a demoted primary every pooled connection is replaced (the next requests reach the new one)",
        "mountaineer_db/engines/failover.py",
        "    context.invalidate_pool_on_disconnect = True",
        "    context.invalidate_pool_on_disconnect = False",
        ("tests/test_failover.py::test_a_read_only_answer_on_the_primary_is_a_503_and_the_pool_is_replaced",),
    ),
    M(
        "demoted-primary-on-read-only-by-request",
        "a read-only transaction the caller asked for is not taken for a failover",
        "mountaineer_db/engines/failover.py",
        '    if context.connection.get_execution_options().get("postgresql_readonly"):',
        "    if False:",
        ("tests/test_failover.py::test_a_read_only_transaction_the_caller_asked_for_is_not_a_failover",),
    ),
    M(
        "multi-host-no-read-write-default",
        "a multi-host primary URL reaches the primary (target_session_attrs=read-write by default)",
        "mountaineer_db/settings/multi_host.py",
        '        return url.update_query_dict({"target_session_attrs": wanted[0]})',
        "        return url",
        ("tests/test_multi_host.py",),
    ),
    M(
        "multi-host-primary-may-reach-a-standby",
        "a primary URL whose target_session_attrs could reach a standby is refused",
        "mountaineer_db/settings/multi_host.py",
        '    if attrs not in wanted and (is_multi_host(url) or attrs != "any"):',
        "    if False:",
        ("tests/test_multi_host.py",),
    ),
    M(
        "multi-host-one-port",
        "each host of a multi-host URL is reached on its own port",
        "mountaineer_db/engines/connections.py",
        '        arguments["port"] = [port for _, port in pairs]',
        '        arguments["port"] = pairs[-1][1]',
        ("tests/test_multi_host.py",),
    ),
    M(
        "postgres-host-list-ignores-its-ports",
        "POSTGRES_HOST=db1,db2:6432 keeps each host's own port",
        "mountaineer_db/settings/multi_host.py",
        "            port = int(port_text)",
        "            port = default_port",
        ("tests/test_multi_host.py",),
    ),
    M(
        "replica-url-list-split-at-every-comma",
        "DATABASE_REPLICA_URLS may hold multi-host URLs",
        "mountaineer_db/settings/urls.py",
        "        return [part.strip() for part in _BEFORE_A_URL.split(text) if part.strip()]",
        '        return [part.strip() for part in text.split(",") if part.strip()]',
        ("tests/test_multi_host.py",),
    ),
    M(
        "multi-host-no-wait-for-a-primary",
        "while no listed host accepts writes (a failover), a connection waits within DATABASE_CONNECT_TIMEOUT",
        "mountaineer_db/engines/connections.py",
        "        self.transient = _TRANSIENT_MULTI_HOST_ERRORS if is_multi_host(url) else _TRANSIENT_CONNECT_ERRORS",
        "        self.transient = _TRANSIENT_CONNECT_ERRORS",
        ("tests/test_patroni.py::test_multi_host_urls_find_the_primary_and_the_standbys_and_follow_a_switchover",),
    ),
    M(
        "demoted-primary-real-switchover",
        "on a real switchover a demoted primary is a 503 and the next requests reach the new primary",
        "mountaineer_db/engines/failover.py",
        "    context.is_disconnect = True\n    context.invalidate_pool_on_disconnect = True",
        "    return None",
        ("tests/test_patroni.py::test_a_demoted_primary_is_a_503_and_the_next_requests_reach_the_new_primary",),
    ),
    M(
        "connect-hint-ignores-the-url",
        "a refused connection names the settings the user wrote (the URL, not POSTGRES_*)",
        "mountaineer_db/engines/connections.py",
        "    if config._url_from_parts_:\n        return \"POSTGRES_HOST and POSTGRES_PORT\"",
        "    if True:\n        return \"POSTGRES_HOST and POSTGRES_PORT\"",
        ("tests/test_cli.py::test_an_unreachable_database_is_one_clear_line",),
    ),
    M(
        "setup-page-without-config",
        "the set-up page's command names the app config when nothing else does",
        "mountaineer_db/requests/setup_errors.py",
        "        if os.environ.get(CONFIG_ENV_VAR) != spec:",
        "        if False:",
        ("tests/test_setup_errors.py",),
    ),
    M(
        "xdist-builds-per-worker",
        "under pytest-xdist the tables are made once, in a template the workers copy",
        "mountaineer_db/testing/plugin.py",
        "    if shared is not None and key is not None:",
        "    if shared is not None and key is None:",
        ("tests/testing/test_parallel.py",),
    ),
    M(
        "free-port-unreserved",
        "a port handed out by free_port is reserved against every other caller",
        "mountaineer_db/servers/_processes.py",
        "        if locked:\n",
        "        if True:\n",
        ("tests/test_cluster.py::test_free_ports_are_reserved_across_processes",),
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
