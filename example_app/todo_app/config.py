"""The app's settings: Mountaineer's ConfigBase plus mountaineer_db's DatabaseConfig.

Every field reads the environment variable of the same name, and `.env` in the working
directory. For local development `.env` sets `DATABASE_EMBEDDED=true`; in production set
POSTGRES_HOST / POSTGRES_USER / POSTGRES_PASSWORD (or DATABASE_URL) instead.
"""

from mountaineer import ConfigBase

from mountaineer_db import DatabaseConfig


class AppConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = "todo_app"
    POSTGRES_DB: str | None = "todo_app"
