"""What request sessions on an engine check: lazy loads and N+1 queries, as its config says.

Recorded on the engine when it is built (`install_request_checks`): the resolved
DATABASE_LAZY_LOADS and DATABASE_N_PLUS_ONE_THRESHOLD. With `allow` and no threshold nothing is
recorded or installed, and requests on that engine pay nothing. The checks themselves run in
`mountaineer_db.requests.lazy_loads` and `mountaineer_db.engines.n_plus_one`.
"""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mountaineer_db.engines.n_plus_one import install_statement_counts
from mountaineer_db.settings.config import DatabaseConfig, LazyLoads

__all__ = ["CHECKS_ATTRIBUTE", "RequestChecks", "install_request_checks", "request_checks_of"]

CHECKS_ATTRIBUTE = "_mdb_request_checks"
"""The sync engine's attribute holding its `RequestChecks` (absent: nothing to check)."""


@dataclass(frozen=True, slots=True)
class RequestChecks:
    """The checks of an engine's request sessions."""

    lazy_loads: LazyLoads
    """DATABASE_LAZY_LOADS, resolved (its default depends on ENVIRONMENT)."""
    lazy_loads_set: bool
    """True when DATABASE_LAZY_LOADS was set: the test kit then follows it, else it raises."""
    n_plus_one_threshold: int | None


def install_request_checks(engine: AsyncEngine, config: DatabaseConfig) -> None:
    """Record the checks of `config` on `engine` (called once, when the engine is built)."""
    threshold = config.DATABASE_N_PLUS_ONE_THRESHOLD
    checks = RequestChecks(config.lazy_loads, config.DATABASE_LAZY_LOADS is not None, threshold)
    if checks.lazy_loads is LazyLoads.ALLOW and checks.n_plus_one_threshold is None:
        return
    setattr(engine.sync_engine, CHECKS_ATTRIBUTE, checks)
    if checks.n_plus_one_threshold is not None:
        install_statement_counts(engine)


def request_checks_of(engine: AsyncEngine | AsyncConnection) -> RequestChecks | None:
    """The checks recorded on `engine` (or a connection's engine; None: nothing to check)."""
    return getattr(engine.sync_engine, CHECKS_ATTRIBUTE, None)
