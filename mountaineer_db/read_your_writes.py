"""Read-your-writes across requests: a signed cookie carries the client's last commit position.

When replicas are configured, a request session on the primary notes, after each commit, the
primary's WAL insert position (`pg_current_wal_insert_lsn()`, one statement after COMMIT;
sessions without replicas never run it). The position goes to the client in a cookie signed
with HMAC-SHA256, and into the request's scope for reads later in the same request. A read
routed to a replica must see that position: the replica serves it only once it has replayed
that far (see `ReplicaSet.admit`), else the read goes to the primary. Other clients carry no
such cookie and keep reading replicas.

- The insert position, not `pg_current_wal_lsn()`: with `synchronous_commit = off` the
  commit record may not be written yet when COMMIT returns, but it is inserted; replicas
  receive it once it is flushed.
- The key is DATABASE_READ_YOUR_WRITES_SECRET, else derived from the primary's URL with its
  password (the same in every process of a deploy, unknown to clients). Without either, a
  random key per process is used and a warning says to set the secret.
- A cookie that is unsigned, tampered with, signed with another key or expired is ignored.
  It expires DATABASE_REPLICA_MAX_LAG + 60 s after the write: by then any replica fit to
  serve reads has replayed it.
- If the position cannot be read after a commit, the cookie says "read from the primary"
  until it expires.
- The cookie reaches the client through FastAPI's response injection, so it is sent with
  responses FastAPI builds (actions returning a model, a dict or None, the @sideeffect JSON);
  a handler returning its own `Response` object ends FastAPI's header merging.
"""

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy.util
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util.concurrency import in_greenlet
from starlette.requests import HTTPConnection
from starlette.responses import Response

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.session import RequestSyncSession

__all__ = [
    "COOKIE_NAME",
    "POSITION_SQL",
    "Positions",
    "ReplicatedRequestSession",
    "Signer",
    "await_",
    "format_position",
    "required_position",
    "signer_for",
]

logger = logging.getLogger("mountaineer_db")

COOKIE_NAME = "mdb_read_after"
"""The cookie holding the client's last commit position (`<position>.<expiry>.<signature>`)."""
POSITION_SQL = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint"

PRIMARY_ONLY = (1 << 63) - 1
"""A position no replica reaches: the client reads from the primary until the cookie expires."""

# Runs a coroutine from sync code inside SQLAlchemy's greenlet (`await_` in 2.1, `await_only` in
# 2.0), as mountaineer_db.commit_hooks does; tests/test_commit_hooks.py has the canary.
await_: Callable[[Awaitable[Any]], Any] = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only

_COMMITTED = "mountaineer_db.committed_position"  # request scope: the latest commit of this request
_FROM_COOKIE = "mountaineer_db.cookie_position"  # request scope: the verified cookie, parsed once
_process_key: bytes | None = None


def format_position(position: int) -> str:
    """A WAL position as PostgreSQL writes it (`0/3000060`)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class Signer:
    """Signs and checks cookie values with one key; values carry their own expiry."""

    __slots__ = ("_key", "lifetime")

    def __init__(self, key: bytes, lifetime: float) -> None:
        self._key = key
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"Signer(lifetime={self.lifetime:g}s)"

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, position: int) -> str:
        payload = f"{position:x}.{int(time.time() + self.lifetime):x}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, value: str | None) -> int:
        """The position in a valid, unexpired `value`; 0 for anything else."""
        if not value or value.count(".") != 2:
            return 0
        payload, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return 0
        position, _, expires = payload.partition(".")
        try:
            if int(expires, 16) < time.time():
                return 0
            return int(position, 16)
        except ValueError:
            return 0


def signer_for(config: DatabaseConfig) -> Signer:
    """The signer of `config`'s cookies: its secret, else a key derived from the primary's URL and password."""
    global _process_key
    lifetime = config.DATABASE_REPLICA_MAX_LAG + 60.0
    secret = config.DATABASE_READ_YOUR_WRITES_SECRET
    if secret is not None and secret.get_secret_value():
        material = secret.get_secret_value().encode()
        return Signer(hashlib.sha256(b"mountaineer_db read-your-writes\0" + material).digest(), lifetime)
    url = config.database_url
    if url.password:
        material = url.render_as_string(hide_password=False).encode()
        return Signer(hmac.new(b"mountaineer_db read-your-writes", material, hashlib.sha256).digest(), lifetime)
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        logger.warning(
            "DATABASE_READ_YOUR_WRITES_SECRET is not set and the database URL has no password: the "
            "read-your-writes cookie is signed with a key of this process only, which other processes "
            "reject. Set DATABASE_READ_YOUR_WRITES_SECRET to the same random value in every process."
        )
    return Signer(_process_key, lifetime)


def required_position(request: HTTPConnection | None, signer: Signer) -> int:
    """The position a read in this request must see: the client's cookie, or a commit earlier in this request."""
    if request is None:
        return 0
    scope = request.scope
    from_cookie = scope.get(_FROM_COOKIE)
    if from_cookie is None:
        from_cookie = scope[_FROM_COOKIE] = signer.verify(request.cookies.get(COOKIE_NAME))
    return max(int(from_cookie), int(scope.get(_COMMITTED, 0)))


class Positions:
    """Where one request's commits went: into its scope, and into a cookie on its response."""

    __slots__ = ("request", "response", "signer")

    def __init__(self, signer: Signer, request: HTTPConnection | None, response: Any) -> None:
        self.signer = signer
        self.request = request
        self.response = response

    def record(self, position: int) -> None:
        if self.request is not None:
            scope = self.request.scope
            scope[_COMMITTED] = max(int(scope.get(_COMMITTED, 0)), position)
            position = scope[_COMMITTED]
        response = self.response
        if not isinstance(response, Response):  # resolved outside FastAPI: nowhere to put a cookie
            return
        prefix = f"{COOKIE_NAME}=".encode()
        raw = response.headers.raw  # the live header list: replace this request's earlier cookie
        raw[:] = [(name, value) for name, value in raw if not (name == b"set-cookie" and value.startswith(prefix))]
        secure = self.request is not None and self.request.url.scheme in ("https", "wss")
        response.set_cookie(
            COOKIE_NAME,
            self.signer.sign(position),
            max_age=int(self.signer.lifetime),
            path="/",
            httponly=True,
            samesite="lax",
            secure=secure,
        )


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
