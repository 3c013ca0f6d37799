"""The app configs: the URL comes from SQLALCHEMY_DATABASE_URI in the environment."""

from mountaineer import ConfigBase

from mountaineer_db import DatabaseConfig


class AppConfig(DatabaseConfig, ConfigBase):
    """Migrates SQLModel.metadata after importing migrapp.models (the default)."""

    PACKAGE: str | None = "migrapp"


class TablesConfig(DatabaseConfig):
    """Migrates the plain SQLAlchemy MetaData in migrapp.tables (MIGRATIONS_METADATA)."""

    PACKAGE: str | None = "migrapp"
    MIGRATIONS_METADATA: str | None = "migrapp.tables:metadata"


class TicketsConfig(DatabaseConfig):
    """Migrates the `ticket` table with an Enum column in migrapp.tickets (MIGRAPP_ENUM_VERSION)."""

    PACKAGE: str | None = "migrapp"
    MIGRATIONS_METADATA: str | None = "migrapp.tickets:metadata"


class HostileEnumConfig(DatabaseConfig):
    """Migrates the `remark` table, whose enum has hostile values, in migrapp.hostile_enum (MIGRAPP_HOSTILE_VERSION)."""

    PACKAGE: str | None = "migrapp"
    MIGRATIONS_METADATA: str | None = "migrapp.hostile_enum:metadata"
