from mountaineer import ConfigBase
from pydantic_settings import SettingsConfigDict

from mountaineer_db import DatabaseConfig


class AppConfig(ConfigBase, DatabaseConfig):
    PACKAGE: str | None = "myapp"

    model_config = SettingsConfigDict(env_file=(".env",))
