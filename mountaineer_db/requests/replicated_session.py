"""The request session on the primary when replicas are configured: it notes where its commits went.

After each commit that sent something, one statement on the same connection reads the
primary's WAL insert position, and the request's `Positions` record it (in the request scope
and in the read-your-writes cookie: `mountaineer_db.replicas.read_your_writes`). Sessions
without replicas never run any of this.
"""

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util.concurrency import in_greenlet

from mountaineer_db.replicas.read_your_writes import POSITION_SQL, PRIMARY_ONLY, Positions, await_
from mountaineer_db.requests.session import RequestSyncSession

__all__ = ["ReplicatedRequestSession"]

logger = logging.getLogger("mountaineer_db")


class ReplicatedRequestSession(RequestSyncSession):
    """The request session on the primary when replicas are configured: notes where its commits went."""

    _mdb_positions: Positions | None = None
    _mdb_touched: bool = False


def _began(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    session._mdb_touched = True  # type: ignore[attr-defined]


def _committed(session: Session) -> None:
    if session.get_nested_transaction() is not None or not getattr(session, "_mdb_touched", False):
        return  # a savepoint, or a commit that sent nothing to the server
    session._mdb_touched = False  # type: ignore[attr-defined]
    positions: Positions | None = getattr(session, "_mdb_positions", None)
    if positions is not None:
        positions.record(_position_after_commit(session))


def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session._mdb_touched = False  # type: ignore[attr-defined]


def _position_after_commit(session: Session) -> int:
    """The primary's WAL insert position, read on the session's kept connection right after COMMIT."""
    kept = getattr(session, "_kept", {})
    if in_greenlet():
        for connection in list(kept.values()):
            if connection.closed or connection.invalidated:
                continue
            try:
                return int(await_(connection.connection.driver_connection.fetchval(POSITION_SQL)))
            except Exception as error:  # noqa: BLE001 - the commit stands; reads go to the primary instead
                logger.warning(
                    "Could not read the WAL position after a commit (%s); this client reads from the primary for "
                    "a while.",
                    type(error).__name__,
                )
    return PRIMARY_ONLY


event.listen(ReplicatedRequestSession, "after_begin", _began)
event.listen(ReplicatedRequestSession, "after_commit", _committed)
event.listen(ReplicatedRequestSession, "after_transaction_end", _ended)
