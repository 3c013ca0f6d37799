"""Alembic migrations for Mountaineer apps, as plain async functions.

```python
from mountaineer_db import migrations

await migrations.init()                          # <PACKAGE>/migrations/ with an async env.py
await migrations.generate("add todo priority")   # autogenerate from the models
await migrations.apply()                         # upgrade to head, safe with N processes at once
await migrations.check()                         # MigrationCheckError when models and database differ
print(await migrations.sql())                    # the SQL a deploy would run, to review
await migrations.lint()                          # squawk's findings on that SQL
await migrations.stamp("head")                   # adopt a database whose tables already exist
await migrations.adoption_advice()               # says so when a database needs that, else None
```

The `mountaineer-db migrate ...` commands are a thin shell over these; an app's own click
CLI can call them too. `naming_convention` is the constraint naming applied to the target
metadata (unless it has its own) so later migrations can drop constraints by name.
"""

from mountaineer_db.migrations.adoption import adoption_advice, unadopted_tables
from mountaineer_db.migrations.commands import (
    apply,
    check,
    current,
    generate,
    history,
    init,
    rollback,
    stamp,
)
from mountaineer_db.migrations.differences import describe_difference
from mountaineer_db.migrations.enums import parse_enum_renames
from mountaineer_db.migrations.environment import (
    MIGRATION_LOCK_KEY,
    migration_engine,
    migration_lock,
    migration_settings,
    render_item,
)
from mountaineer_db.migrations.names import name_differences
from mountaineer_db.migrations.plumbing import (
    MigrationCheckError,
    MigrationError,
    MigrationLockTimeoutError,
    Revision,
)
from mountaineer_db.migrations.project import (
    CONFIG_ENV_VAR,
    apply_naming_convention,
    load_config,
    load_metadata,
    migrations_directory,
    naming_convention,
)
from mountaineer_db.migrations.review import LINT_EXCLUDED_RULES, LintFinding, lint, sql

__all__ = [
    "CONFIG_ENV_VAR",
    "LINT_EXCLUDED_RULES",
    "MIGRATION_LOCK_KEY",
    "LintFinding",
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "Revision",
    "adoption_advice",
    "apply",
    "apply_naming_convention",
    "check",
    "current",
    "describe_difference",
    "generate",
    "history",
    "init",
    "lint",
    "load_config",
    "load_metadata",
    "migration_engine",
    "migration_lock",
    "migration_settings",
    "migrations_directory",
    "name_differences",
    "naming_convention",
    "parse_enum_renames",
    "render_item",
    "rollback",
    "sql",
    "stamp",
    "unadopted_tables",
]
