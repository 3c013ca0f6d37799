"""The app config: the URL comes from SQLALCHEMY_DATABASE_URI in the environment."""

from mountaineer import ConfigBase

from mountaineer_db import DatabaseConfig


class AppConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = "premove_app"
