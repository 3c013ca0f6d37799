"""Review a deploy's migrations before applying them: the SQL, and squawk's findings on it.

```python
from mountaineer_db import migrations

print(await migrations.sql())                  # from the database's revision to head
print(await migrations.sql("base:head"))       # a FROM:TO range reads no database
for finding in await migrations.lint():        # squawk (the `lint` extra)
    print(finding)
```

The SQL is Alembic's offline mode (`alembic upgrade --sql`), with what `apply` adds itself:
`SET LOCAL lock_timeout` (MIGRATIONS_LOCK_TIMEOUT) after each BEGIN. `lint` runs
[squawk](https://squawkhq.com) on it and reports each finding with the revision it is in.
"""

import asyncio
import io
import json
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from sqlalchemy.engine import Connection

from mountaineer_db.exceptions import DatabaseUnavailableError
from mountaineer_db.migrations.plumbing import (
    MigrationError,
    alembic_errors,
    current_heads,
    lineage,
    on_connection,
    setup,
)
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["LINT_EXCLUDED_RULES", "LintFinding", "lint", "sql"]

LINT_EXCLUDED_RULES: Final[tuple[str, ...]] = (
    # Alembic runs revisions in a transaction and records each one: a failed run is rolled
    # back and re-run whole, so IF [NOT] EXISTS is not needed to make it re-runnable.
    "prefer-robust-stmts",
    # Migrations run without a statement timeout on purpose (a backfill may take long);
    # waiting for locks is what blocks the app, and MIGRATIONS_LOCK_TIMEOUT bounds that.
    "require-statement-timeout",
    # Advice on column types for new tables (bigint ids, identity, text, timestamptz): a
    # design choice, not an operation that locks or rewrites a table while the app serves.
    # Alembic's own version table (VARCHAR(32)) would trip them on every first deploy.
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-text-field",
    "prefer-timestamptz",
)
"""squawk rules `lint` leaves out unless asked for (`include=`, `--include RULE`)."""

_RUNNING: Final = re.compile(r"^-- Running (?:upgrade|downgrade) .*-> (?P<to>\S+)\s*$")


@dataclass(frozen=True)
class LintFinding:
    """One squawk finding: where it is (revision, line of `sql()`'s text) and what to do."""

    revision: str | None
    line: int
    rule: str
    message: str
    help: str | None

    def __str__(self) -> str:
        where = f"revision {self.revision}, " if self.revision else ""
        advice = f" {self.help.rstrip('.')}." if self.help else ""
        return f"{where}line {self.line}: {self.rule}: {self.message}{advice}"


@dataclass(frozen=True)
class _Plan:
    range: str | None  # what to pass to `alembic upgrade --sql`; None: nothing to apply
    server_version: str | None


async def _plan(revision: str, config: DatabaseConfig) -> _Plan:
    """The range to render: as given (FROM:TO), else from the database's revision to `revision`."""
    if ":" in revision:
        start, _, end = revision.partition(":")
        if not start or not end:
            raise MigrationError(f"{revision!r} is not a FROM:TO range; for example base:head or ae10:head.")
        return _Plan(end if start == "base" else revision, None)
    _config, _alembic_config, script = setup(config)

    def read(connection: Connection) -> tuple[tuple[str, ...], str]:
        version = ".".join(str(part) for part in connection.dialect.server_version_info or ())
        with alembic_errors():
            return current_heads(connection), version

    try:
        heads, version = await on_connection(config, read, lock=False)
    except DatabaseUnavailableError as error:
        raise MigrationError(
            f"{error} To render the SQL without a database, give a range: FROM:TO (e.g. base:head)."
        ) from None
    if len(heads) > 1:
        raise MigrationError(
            f"The database is at several revisions ({', '.join(heads)}); give a range FROM:TO instead."
        )
    with alembic_errors():
        wanted = lineage(script, [item.revision for item in script.get_revisions(revision) if item])
        if wanted <= lineage(script, heads):
            return _Plan(None, version)
    return _Plan(f"{heads[0]}:{revision}" if heads else revision, version)


def _render(config: DatabaseConfig, range_: str) -> str:
    _config, alembic_config, _script = setup(config, target_metadata=None)
    buffer = io.StringIO()
    alembic_config.output_buffer = buffer
    with alembic_errors():
        command.upgrade(alembic_config, range_, sql=True)
    timeout = f"SET LOCAL lock_timeout = '{max(1, round(config.MIGRATIONS_LOCK_TIMEOUT * 1000))}ms';"
    lines: list[str] = []
    for line in buffer.getvalue().splitlines():
        lines.append(line)
        if line.strip().upper() == "BEGIN;":
            lines.append(timeout)
    return "\n".join(lines).strip() + "\n"


async def sql(revision: str = "head", *, config: DatabaseConfig | None = None) -> str:
    """The SQL `apply` would run to reach `revision`; "" when the database is already there.

    `revision` is a target (default head), rendered from the database's current revision
    (one connection, read only), or a range `FROM:TO` (`base:head`, `ae10:head`), which
    needs no database at all.
    """
    config, _alembic_config, _script = setup(config)
    plan = await _plan(revision, config)
    return _render(config, plan.range) if plan.range else ""


def _squawk() -> str:
    beside = Path(sys.executable).parent / "squawk"  # a virtualenv's bin/, even when not on PATH
    found = str(beside) if beside.is_file() else shutil.which("squawk")
    if found is None:
        raise MigrationError(
            "squawk is not installed: install mountaineer-db with its `lint` extra, the way you installed it "
            "(pip install -e 'path/to/mountaineer-db[lint]' from a clone), or pip install squawk-cli."
        )
    return found


def _revision_of_lines(text: str) -> list[str | None]:
    """For each line of Alembic's offline SQL, the revision whose section it is in."""
    current: str | None = None
    owners: list[str | None] = []
    for line in text.splitlines():
        match = _RUNNING.match(line)
        if match:
            current = match.group("to")
        owners.append(current)
    return owners


async def lint(
    revision: str = "head",
    *,
    config: DatabaseConfig | None = None,
    include: Iterable[str] = (),
) -> list[LintFinding]:
    """squawk's findings on `sql(revision)`, oldest first; [] when it finds nothing unsafe.

    The rules in `LINT_EXCLUDED_RULES` are left out unless named in `include`. A
    `.squawk.toml` in the current directory is honoured by squawk itself.
    """
    config, _alembic_config, _script = setup(config)
    plan = await _plan(revision, config)
    if plan.range is None:
        return []
    text = _render(config, plan.range)
    included = set(include)
    excluded = [rule for rule in LINT_EXCLUDED_RULES if rule not in included]
    argv = [_squawk(), "--reporter", "json", "--stdin-filepath", "migrations.sql"]
    if excluded:
        argv += ["--exclude", ",".join(excluded)]
    if included - set(LINT_EXCLUDED_RULES):
        argv += ["--include", ",".join(sorted(included - set(LINT_EXCLUDED_RULES)))]
    if plan.server_version:
        argv += ["--pg-version", plan.server_version]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate(text.encode())
    detail = (err or out).decode(errors="replace").strip().splitlines()
    if process.returncode not in (0, 1):  # 1 means "found something"; anything else is squawk failing
        raise MigrationError(f"squawk failed: {detail[0] if detail else f'exit code {process.returncode}'}")
    try:
        reported: list[dict[str, Any]] = json.loads(out or b"[]")
    except ValueError:
        raise MigrationError(f"squawk printed no JSON report: {detail[0] if detail else 'no output'}") from None
    owners = _revision_of_lines(text)
    findings = []
    for item in reported:
        line = int(item.get("line", 0)) + 1  # squawk's JSON counts lines from 0
        findings.append(
            LintFinding(
                revision=owners[line - 1] if 0 < line <= len(owners) else None,
                line=line,
                rule=str(item.get("rule_name", "?")),
                message=str(item.get("message", "")).strip(),
                help=item.get("help") or None,
            )
        )
    return sorted(findings, key=lambda finding: finding.line)
