"""The config its migrations run with (the migration role's URL, in SQLALCHEMY_DATABASE_URI)."""

from mountaineer_db import DatabaseConfig


class MigrationsConfig(DatabaseConfig):
    PACKAGE: str | None = "tests.sample_apps.tenant_app"
    MIGRATIONS_METADATA: str | None = "tests.sample_apps.tenant_app.models:metadata"
    DATABASE_TENANT_SETTING: str | None = "app.tenant_id"
