"""Where an app's migration pieces are: its config, its migrations folder, its metadata.

- The config: `--config module:ClassName`, else `MOUNTAINEER_DB_CONFIG=module:ClassName`, else
  the config the Mountaineer app registered (`load_config`).
- The migrations folder: `<PACKAGE>/migrations/`, PACKAGE being the config's `PACKAGE`
  field, located with importlib without importing the package (`migrations_directory`).
- The metadata: `MIGRATIONS_METADATA=module:attribute`, else `SQLModel.metadata` after
  importing `<PACKAGE>.models` (`load_metadata`), with `naming_convention` applied.

Nothing here touches the network; only `load_metadata` imports app code.
"""

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Final

from sqlalchemy import MetaData

from mountaineer_db.exceptions import ConfigurationError
from mountaineer_db.settings.appconfig import registered_config
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "apply_naming_convention",
    "import_string",
    "load_config",
    "load_metadata",
    "migrations_directory",
    "naming_convention",
]

CONFIG_ENV_VAR: Final = "MOUNTAINEER_DB_CONFIG"
"""Environment variable naming the app config class as `module:ClassName`."""

naming_convention: Final[dict[str, str]] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint and index names used by migrations, so later migrations can drop them by name.

`pk_todo`, `fk_todo_owner_id_user`, `uq_user_email`, `ix_todo_title`, and for a
`CheckConstraint(..., name="positive")` on `item`: `ck_item_positive` (check constraints
need a `name`; unnamed ones keep PostgreSQL's default name). Names longer than PostgreSQL's
63 characters are shortened deterministically by SQLAlchemy.
"""


def import_string(spec: str, setting: str) -> Any:
    """Import `module:attribute` (the attribute may be dotted); errors name `setting`."""
    module_name, sep, attribute = spec.strip().partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"{setting} is {spec!r}; expected module:attribute, for example myapp.config:AppConfig."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigurationError(
                f"{setting} is {spec!r}, but module {module_name!r} cannot be imported (no module named "
                f"{missing!r}). Check the spelling, install the app (pip install -e .) or run from the "
                "directory that contains it."
            ) from None
        raise
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(
                f"{setting} is {spec!r}, but module {module_name!r} has no attribute {attribute!r}."
            ) from None
    return value


def load_config(spec: str | None = None) -> DatabaseConfig:
    """The app config: `spec` (`module:ClassName`), else $MOUNTAINEER_DB_CONFIG, else the registered one.

    A named class is instantiated (a Mountaineer `ConfigBase` registers itself then), unless
    an instance of it is already registered, which is returned instead.
    """
    from mountaineer import config as mountaineer_config

    source = "--config"
    if not spec:
        spec = os.environ.get(CONFIG_ENV_VAR) or None
        source = CONFIG_ENV_VAR
    registered = mountaineer_config.APP_CONFIG
    if not spec:
        if registered is None:
            raise ConfigurationError(
                "No app config found. Pass --config module:ClassName (for example myapp.config:AppConfig) "
                f"or set {CONFIG_ENV_VAR}=module:ClassName."
            )
        return registered_config()
    config_class = import_string(spec, source)
    if not (isinstance(config_class, type) and issubclass(config_class, DatabaseConfig)):
        raise ConfigurationError(
            f"{source} names {spec!r}, which is not a DatabaseConfig subclass; declare your config as "
            "`class AppConfig(DatabaseConfig, ConfigBase)`."
        )
    if isinstance(registered, config_class):
        return registered
    try:
        config: DatabaseConfig = config_class()
    except ConfigurationError:
        raise
    except ValueError as error:
        if "already registered" not in str(error):
            raise
        raise ConfigurationError(
            f"Cannot build {config_class.__name__}: another app config ({type(registered).__name__}) is "
            "already registered in this process. Pass that config instead."
        ) from None
    return config


def _package_name(config: DatabaseConfig) -> str:
    package = getattr(config, "PACKAGE", None)
    if not isinstance(package, str) or not package:
        raise ConfigurationError(
            f"{type(config).__name__}.PACKAGE is not set, so the migrations folder (<PACKAGE>/migrations/) "
            'and the models (<PACKAGE>.models) cannot be found. Set PACKAGE = "myapp" in your config.'
        )
    return package


def migrations_directory(config: DatabaseConfig) -> Path:
    """`<PACKAGE>/migrations/` for the config's PACKAGE (found without importing the package)."""
    package = _package_name(config)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigurationError(
            f"PACKAGE is {package!r}, but no importable package of that name was found. Install the app "
            "(pip install -e .) or run from the directory that contains it."
        )
    return Path(locations[0]) / "migrations"


def load_metadata(config: DatabaseConfig) -> MetaData:
    """The metadata to migrate, with `naming_convention` applied (see `apply_naming_convention`)."""
    if config.MIGRATIONS_METADATA:
        metadata = import_string(config.MIGRATIONS_METADATA, "MIGRATIONS_METADATA")
        if not isinstance(metadata, MetaData):
            raise ConfigurationError(
                f"MIGRATIONS_METADATA is {config.MIGRATIONS_METADATA!r}, which is a {type(metadata).__name__}, "
                "not a sqlalchemy MetaData; point it at one, for example myapp.models:metadata."
            )
        return apply_naming_convention(metadata)
    package = _package_name(config)
    models = f"{package}.models"
    try:
        importlib.import_module(models)
    except ModuleNotFoundError as error:
        if error.name not in (models, package):
            raise
        raise ConfigurationError(
            f"No models to migrate: module {models!r} does not exist. Define your tables in "
            f"{package}/models.py (or a models package), or set MIGRATIONS_METADATA=module:attribute."
        ) from None
    from sqlmodel import SQLModel

    return apply_naming_convention(SQLModel.metadata)


def apply_naming_convention(metadata: MetaData) -> MetaData:
    """`metadata` with the `naming_convention` applied, unless it has a convention of its own.

    SQLAlchemy names a constraint when it is attached to its table, so the tables of a
    metadata whose convention is set afterwards keep unnamed constraints. Instead of
    changing the app's metadata, this returns a copy whose tables were attached under the
    convention (`Table.to_metadata`), so SQLAlchemy's own rule names them: explicit names
    are kept, except a named check constraint, which becomes `ck_<table>_<name>`.
    """
    if dict(metadata.naming_convention) != dict(MetaData().naming_convention):
        return metadata  # the app chose its own convention
    named = MetaData(naming_convention=dict(naming_convention), schema=metadata.schema)
    for table in metadata.sorted_tables:
        table.to_metadata(named)
    return named
