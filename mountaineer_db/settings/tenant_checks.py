"""Checks of the tenancy settings, run when a `DatabaseConfig` is built (`config_checks`)."""

import re
from typing import TYPE_CHECKING

from mountaineer_db.settings.sources import described

if TYPE_CHECKING:
    from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["check_setting_name", "tenant_problems"]

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def check_setting_name(name: str) -> str | None:
    """Why `name` cannot be DATABASE_TENANT_SETTING (None when it can)."""
    if _SETTING_NAME.fullmatch(name):
        return None
    return (
        f"{described('DATABASE_TENANT_SETTING')} is {name!r}, not a custom PostgreSQL setting name: use two or "
        "more identifiers joined by dots (letters, digits and underscores), for example app.tenant_id."
    )


def tenant_problems(config: "DatabaseConfig") -> list[str]:
    """What is wrong with DATABASE_TENANT_SETTING and DATABASE_TENANT_BYPASS_ROLE, each with the fix."""
    problems: list[str] = []
    setting = config.DATABASE_TENANT_SETTING
    role = config.DATABASE_TENANT_BYPASS_ROLE
    if setting is not None:
        problem = check_setting_name(setting)
        if problem is not None:
            problems.append(problem)
    if role is not None:
        if setting is None:
            problems.append(
                f"{described('DATABASE_TENANT_BYPASS_ROLE')} is set but DATABASE_TENANT_SETTING is not: the bypass "
                "role is for tenant=ALL_TENANTS, which needs tenancy on. Set DATABASE_TENANT_SETTING too, or "
                "remove DATABASE_TENANT_BYPASS_ROLE."
            )
        if not role or "\x00" in role or len(role.encode()) > 63:
            problems.append(
                f"{described('DATABASE_TENANT_BYPASS_ROLE')} must be a role name of 1 to 63 bytes without NUL."
            )
    return problems
