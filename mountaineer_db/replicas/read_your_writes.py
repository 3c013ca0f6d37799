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
- The keys are DATABASE_READ_YOUR_WRITES_KEYS (comma-separated, the same in every process of a
  deploy): the first signs, any of them verifies, so a key is rotated by putting the new one
  first and dropping the old one after the cookies' lifetime. A key is never derived from
  another secret (such as the database password): a cookie would let a client test guesses of
  that secret offline. Without keys, which config validation refuses in production, a random
  key per process is used, with a warning: cookies then work within one process only.
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy.util
from starlette.requests import HTTPConnection
from starlette.responses import Response

from mountaineer_db.settings.checks import cookie_keys
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "COOKIE_NAME",
    "POSITION_SQL",
    "Positions",
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
# 2.0), as mountaineer_db.requests.commit_hooks does; tests/test_commit_hooks.py has the canary.
await_: Callable[[Awaitable[Any]], Any] = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only

_COMMITTED = "mountaineer_db.committed_position"  # request scope: the latest commit of this request
_FROM_COOKIE = "mountaineer_db.cookie_position"  # request scope: the verified cookie, parsed once
_process_key: bytes | None = None


def format_position(position: int) -> str:
    """A WAL position as PostgreSQL writes it (`0/3000060`)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class Signer:
    """Signs cookie values with the first key, verifies them with any key; values carry their own expiry."""

    __slots__ = ("_keys", "lifetime")

    def __init__(self, keys: bytes | Sequence[bytes], lifetime: float) -> None:
        self._keys = (keys,) if isinstance(keys, bytes) else tuple(keys)
        if not self._keys:
            raise ValueError("A Signer needs at least one key.")
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"Signer({len(self._keys)} key(s), lifetime={self.lifetime:g}s)"

    @staticmethod
    def _mac(key: bytes, payload: str) -> str:
        digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, position: int) -> str:
        payload = f"{position:x}.{int(time.time() + self.lifetime):x}"
        return f"{payload}.{self._mac(self._keys[0], payload)}"

    def verify(self, value: str | None) -> int:
        """The position in a valid, unexpired `value` signed with any of the keys; 0 for anything else."""
        if not value or value.count(".") != 2:
            return 0
        payload, _, mac = value.rpartition(".")
        if not any(hmac.compare_digest(mac.encode(), self._mac(key, payload).encode()) for key in self._keys):
            return 0
        position, _, expires = payload.partition(".")
        try:
            if int(expires, 16) < time.time():
                return 0
            return int(position, 16)
        except ValueError:
            return 0


def _derived(key: str) -> bytes:
    return hashlib.sha256(b"mountaineer_db read-your-writes\0" + key.encode()).digest()


def signer_for(config: DatabaseConfig) -> Signer:
    """The signer of `config`'s cookies: DATABASE_READ_YOUR_WRITES_KEYS, else a key of this process only."""
    global _process_key
    lifetime = config.DATABASE_REPLICA_MAX_LAG + 60.0
    keys = cookie_keys(config)
    if keys:
        return Signer([_derived(key) for key in keys], lifetime)
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        logger.warning(
            "DATABASE_READ_YOUR_WRITES_KEYS is not set: the read-your-writes cookie is signed with a key of this "
            "process only, which other processes reject (so a client may not read its own writes there). Set "
            "DATABASE_READ_YOUR_WRITES_KEYS to the same random value in every process; production requires it."
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
