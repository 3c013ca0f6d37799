"""Where a config's values come from: pydantic-settings' sources, noting each field's origin.

Error messages about contradicting settings say where each value came from ("from the file
.env", "from the environment variable DATABASE_URL", "passed to AppConfig()"); the sources
here record that while a config is being built.
"""

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from mountaineer_db.settings.urls import plain_text_lists

__all__ = ["collecting_origins", "described", "recording_sources"]

_origins: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("mountaineer_db_origins", default=None)
_FROM_ENVIRONMENT = "from the environment"
_ALIASES = {"DATABASE_URL": "SQLALCHEMY_DATABASE_URI"}


class _RecordingSource(PydanticBaseSettingsSource):
    """A settings source that notes which fields it supplied, then hands its values on."""

    def __init__(self, inner: PydanticBaseSettingsSource, origin: str) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner
        self._origin = origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self._inner()
        origins = _origins.get()
        if origins is not None:
            for key in values:  # some pydantic-settings versions key values by alias
                origins.setdefault(_ALIASES.get(key, key), self._origin)
        return values


def recording_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
    file_secret_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """pydantic-settings' sources, in its order, each noting the fields it supplied."""
    env_file = settings_cls.model_config.get("env_file") or ".env"
    # `env_file=(".env",)`, as the old create-mountaineer-app template wrote it, is one file too.
    files = [str(name) for name in env_file] if isinstance(env_file, (list, tuple)) else [str(env_file)]
    dotenv_origin = f"from the file {files[0]}" if len(files) == 1 else f"from one of the files {', '.join(files)}"
    return (
        _RecordingSource(init_settings, f"passed to {settings_cls.__name__}()"),
        _RecordingSource(plain_text_lists(env_settings), _FROM_ENVIRONMENT),
        _RecordingSource(plain_text_lists(dotenv_settings), dotenv_origin),
        _RecordingSource(file_secret_settings, "from the secrets directory"),
    )


@contextlib.contextmanager
def collecting_origins() -> Iterator[None]:
    """Note the origins of the values of the config built inside this block."""
    token = _origins.set({})
    try:
        yield
    finally:
        _origins.reset(token)


def described(name: str) -> str:
    """`POSTGRES_HOST (from the file .env)`: a field and where its value came from, when known."""
    origin = (_origins.get() or {}).get(name)
    if origin == _FROM_ENVIRONMENT:
        aliases = {"SQLALCHEMY_DATABASE_URI": ("SQLALCHEMY_DATABASE_URI", "DATABASE_URL")}.get(name, (name,))
        present = {key.upper() for key in os.environ}
        origin = f"from the environment variable {next((a for a in aliases if a in present), name)}"
    return f"{name} ({origin})" if origin else name
