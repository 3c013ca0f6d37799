"""Finding the app's config: the one Mountaineer registered, or a `module:Class` spec.

`registered_config()` is what request sessions, `database_session()` and the other
`config=None` defaults use; `load_config()` is what the CLI uses (`--config`, then
`MOUNTAINEER_DB_CONFIG`, then the registered config).
"""

from mountaineer_db.exceptions import ConfigurationError
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["registered_config"]


def registered_config() -> DatabaseConfig:
    """The Mountaineer app config registered in this process, checked to be a `DatabaseConfig`.

    Mountaineer registers a `ConfigBase` when it is instantiated (`mountaineer.config.get_config()`
    returns it); only one may be registered per process.
    """
    from mountaineer.config import get_config

    try:
        config = get_config()
    except ValueError:  # nothing registered yet
        config = None
    if config is None:
        raise ConfigurationError(
            "No app config is registered. Instantiate your AppConfig (a subclass of DatabaseConfig "
            "and mountaineer.ConfigBase) before the first request, or pass config= explicitly."
        )
    if not isinstance(config, DatabaseConfig):
        raise ConfigurationError(
            f"The registered config {type(config).__name__} does not inherit from DatabaseConfig; "
            f"declare it as `class {type(config).__name__}(DatabaseConfig, ConfigBase)`."
        )
    return config
