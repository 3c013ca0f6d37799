"""PostgreSQL for Mountaineer apps: config, engines, request sessions, migrations, testing."""

from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.engine import dispose_engines
from mountaineer_db.engines.tenants import ALL_TENANTS
from mountaineer_db.exceptions import (
    ClientDisconnectedError,
    ClusterError,
    ConfigurationError,
    DatabaseAdminError,
    DatabaseConfigError,
    DatabaseNotSetUpError,
    DatabaseUnavailableError,
    InvalidInputError,
    LazyLoadError,
    MigrationCheckError,
    MigrationError,
    MigrationLockTimeoutError,
    MountaineerDBError,
    PrimaryDemotedError,
    ReadOnlySessionError,
    ResourceAlreadyExistsError,
    ResourceConflictError,
    ResourceNotFoundError,
    SchemaChangedError,
    TenantRequiredError,
)
from mountaineer_db.observability import tracing as _tracing  # noqa: F401 - registers its engine hook
from mountaineer_db.observability.health import DatabaseCheck, DatabaseStatus, check_database
from mountaineer_db.requests import dependencies as DatabaseDependencies
from mountaineer_db.requests.commit_hooks import on_commit
from mountaineer_db.requests.dependencies import ReadSessionDep, SessionDep
from mountaineer_db.requests.http_errors import get_or_404, map_integrity_errors
from mountaineer_db.requests.lifespan import database_lifespan
from mountaineer_db.requests.retries import run_in_transaction
from mountaineer_db.requests.session import database_session
from mountaineer_db.settings.config import DatabaseConfig, LazyLoads, PoolType, ReadRouting

__all__ = [
    "ALL_TENANTS",
    "AsyncSession",
    "ClientDisconnectedError",
    "ClusterError",
    "ConfigurationError",
    "DatabaseAdminError",
    "DatabaseCheck",
    "DatabaseConfig",
    "DatabaseConfigError",
    "DatabaseDependencies",
    "DatabaseNotSetUpError",
    "DatabaseStatus",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "LazyLoadError",
    "LazyLoads",
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "MountaineerDBError",
    "PoolType",
    "PrimaryDemotedError",
    "ReadOnlySessionError",
    "ReadRouting",
    "ReadSessionDep",
    "ResourceAlreadyExistsError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "SchemaChangedError",
    "SessionDep",
    "TenantRequiredError",
    "check_database",
    "database_lifespan",
    "database_session",
    "dispose_engines",
    "get_or_404",
    "map_integrity_errors",
    "on_commit",
    "run_in_transaction",
]
