"""MkDocs hook (mkdocs.yml `hooks:`): the configuration page's table, made from `DatabaseConfig`.

The page holds the marker `<!-- database-config-fields -->`; the build replaces it with one
row per field, in declaration order, from the field's type, default and attribute docstring.
A field added, renamed or re-documented in `mountaineer_db/settings/config.py` is on the page at the
next build; tests/test_docs.py checks the built page against the fields.
"""

import enum
import types
import typing
from typing import Any

MARKER = "<!-- database-config-fields -->"
_TYPE_NAMES = {
    "SecretStr": "secret",
    "URL": "URL",
    "str": "text",
    "int": "integer",
    "bool": "`true`/`false`",
    "float": "seconds",
}


def _type_name(annotation: Any) -> str:
    """`float`, `int`, `NULL \\| FIXED_PROCESS`, `URL`, `secret`: what a reader may set."""
    arguments = [item for item in typing.get_args(annotation) if item is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(arguments) == 1:
        return _type_name(arguments[0])
    if origin is typing.Annotated:
        return _type_name(arguments[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    name = getattr(annotation, "__name__", str(annotation))
    return _TYPE_NAMES.get(name, name)


def _default(field: Any) -> str:
    value = field.default
    if value is None:
        return "—"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_table() -> str:
    """The Markdown table of every `DatabaseConfig` field."""
    from mountaineer_db import DatabaseConfig

    rows = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for name, field in DatabaseConfig.model_fields.items():
        aliases = []
        choices = getattr(field.validation_alias, "choices", None) or []
        for alias in choices:
            if isinstance(alias, str) and alias != name:
                aliases.append(f"`{alias}`")
        setting = f"`{name}`" + (f" (or {', '.join(aliases)})" if aliases else "")
        rows.append(
            f"| {setting} | {_type_name(field.annotation)} | {_default(field)} | {_cell(field.description or '')} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, config_table())
    return markdown
