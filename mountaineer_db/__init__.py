"""PostgreSQL for Mountaineer apps: config, engines, request sessions, migrations, testing."""

from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db import dependencies as DatabaseDependencies
from mountaineer_db.commit_hooks import on_commit
from mountaineer_db.config import DatabaseConfig, PoolType, ReadRouting
from mountaineer_db.dependencies import ReadSessionDep, SessionDep
from mountaineer_db.engine import dispose_engines
from mountaineer_db.exceptions import (
    ClientDisconnectedError,
    ClusterError,
    ConfigurationError,
    DatabaseAdminError,
    DatabaseConfigError,
    DatabaseNotSetUpError,
    DatabaseUnavailableError,
    InvalidInputError,
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
)
from mountaineer_db.health import DatabaseCheck, DatabaseStatus, check_database
from mountaineer_db.http_errors import get_or_404, map_integrity_errors
from mountaineer_db.lifespan import database_lifespan
from mountaineer_db.retries import run_in_transaction
from mountaineer_db.session import database_session

__all__ = [
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
    "check_database",
    "database_lifespan",
    "database_session",
    "dispose_engines",
    "get_or_404",
    "map_integrity_errors",
    "on_commit",
    "run_in_transaction",
]
