"""A process-local cache of SCRAM-SHA-256 salted passwords, for the connections `Connector` opens.

SCRAM makes the client derive `SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, i)` on
every connection: at PostgreSQL's default 4,096 iterations about 1 ms of CPU, half of a
connect-per-request behind PgBouncer. RFC 5802 §5.1 lets a client keep that value for a
given password, salt and iteration count, and PgBouncer's `auth_file` (and PostgreSQL itself)
send the same salt and iteration count on every connection of a role: from the second
connection on, the derivation is a lookup. The rules this cache keeps:

- process-local: a bounded dict in this module, never written anywhere, never shown;
- keyed by everything that determines the result (hash name, key length, iterations, salt,
  password) through a keyed BLAKE2b under a random per-process key, so a key reveals nothing;
- the value is the one `hashlib.pbkdf2_hmac` returns, byte for byte; a value computed
  during a connection attempt is kept only once that attempt succeeded, so a wrong password
  is never cached, and a password change (a new salt on the server, or a new password in the
  config) is simply a different key;
- used only by connections `Connector` opens with `DATABASE_SCRAM_CACHE` on (the default);
  every other asyncpg connection in the process derives its key as asyncpg always does;
- no repr, log line or error shows a password, a salt or a derived value;
  `clear_scram_cache()` empties it (`dispose_engines()` calls it).

How it reaches asyncpg, the one place that touches asyncpg's internals: asyncpg 0.32 computes
the salted password with `hashlib.pbkdf2_hmac`, looked up through the module global `hashlib`
of its compiled protocol module (`asyncpg/protocol/scram.pyx`, compiled into
`asyncpg.protocol.protocol`). That one global is pointed at `_HashlibForAsyncpg`, which is
`hashlib` for every other name and every other caller; the `hashlib` module itself is not
touched. If asyncpg stops looking it up that way, the cache is silently bypassed (connections
still work, at the old cost): `tests/test_compat.py` has the canary.
"""

import contextlib
import contextvars
import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = ["ScramAttempt", "cache_info", "clear_scram_cache", "scram_attempt"]

logger = logging.getLogger("mountaineer_db")

_MAX_ENTRIES = 64
"""A process connects to a handful of (role, server) pairs; old entries are dropped first."""

_PROCESS_KEY = secrets.token_bytes(32)


class CacheInfo(NamedTuple):
    """Counters of the cache, for tests and diagnostics (no contents)."""

    entries: int
    hits: int
    misses: int


class _SaltedPasswords:
    """The cache proper: keyed hash of the inputs -> salted password; least recently used dropped first."""

    __slots__ = ("_entries", "_lock", "hits", "misses")

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"<SCRAM salted-password cache: {len(self._entries)} entries>"

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return value

    def put(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > _MAX_ENTRIES:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


_cache = _SaltedPasswords()


def _key(hash_name: Any, password: bytes, salt: bytes, iterations: int, dklen: int | None) -> bytes:
    """A keyed BLAKE2b of every input of the derivation, each length-prefixed (no two inputs collide)."""
    parts = (str(hash_name).encode(), str(dklen).encode(), str(iterations).encode(), salt, password)
    data = b"".join(len(part).to_bytes(8, "big") + part for part in parts)
    return hashlib.blake2b(data, key=_PROCESS_KEY, digest_size=32).digest()


class ScramAttempt:
    """One connection attempt's derivations: kept in the cache only if the attempt succeeds."""

    __slots__ = ("_computed", "enabled")

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._computed: list[tuple[bytes, bytes]] = []

    def __repr__(self) -> str:
        return f"<ScramAttempt enabled={self.enabled}>"

    def derived(self, key: bytes, value: bytes) -> None:
        self._computed.append((key, value))

    def authenticated(self) -> None:
        """The server accepted the proof: what this attempt derived is right; keep it."""
        for key, value in self._computed:
            _cache.put(key, value)
        self._computed.clear()

    def discard(self) -> None:
        self._computed.clear()


_attempt: contextvars.ContextVar[ScramAttempt | None] = contextvars.ContextVar(
    "mountaineer_db_scram_attempt", default=None
)


class _HashlibForAsyncpg:
    """`hashlib` as asyncpg's protocol module sees it: `pbkdf2_hmac` consults the cache inside
    a `scram_attempt`, and is plain `hashlib.pbkdf2_hmac` everywhere else."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)

    def __repr__(self) -> str:
        return "<hashlib, as seen by asyncpg's protocol (mountaineer_db SCRAM cache)>"

    @staticmethod
    def pbkdf2_hmac(hash_name: str, password: Any, salt: Any, iterations: int, dklen: int | None = None) -> bytes:
        attempt = _attempt.get()
        if attempt is None or not isinstance(password, bytes) or not isinstance(salt, bytes):
            return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations, dklen)
        key = _key(hash_name, password, salt, iterations, dklen)
        value = _cache.get(key)
        if value is None:
            value = hashlib.pbkdf2_hmac(hash_name, password, salt, iterations, dklen)
            attempt.derived(key, value)
        return value


_install_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet


def _install() -> bool:
    """Point asyncpg's protocol module at `_HashlibForAsyncpg` (once); False if its layout differs."""
    global _installed
    if _installed is not None:
        return _installed
    with _install_lock:
        if _installed is None:
            from asyncpg.protocol import protocol

            current = getattr(protocol, "hashlib", None)
            if isinstance(current, _HashlibForAsyncpg):
                _installed = True
            elif current is hashlib:
                protocol.hashlib = _HashlibForAsyncpg()
                _installed = True
            else:
                logger.debug("asyncpg's protocol module has no `hashlib` global; the SCRAM cache is off.")
                _installed = False
    return _installed


@contextlib.contextmanager
def scram_attempt(*, enabled: bool) -> Iterator[ScramAttempt]:
    """Around one `asyncpg.connect()`: with `enabled`, its SCRAM derivation may come from the
    cache; call `authenticated()` on what this yields once the connection is open.

    asyncpg runs the authentication in protocol callbacks that see the context the connection
    was created in, so the context variable set here reaches them (asyncio and uvloop alike).
    """
    attempt = ScramAttempt(enabled=enabled and _install())
    if not attempt.enabled:
        yield attempt
        return
    token = _attempt.set(attempt)
    try:
        yield attempt
    finally:
        _attempt.reset(token)
        attempt.discard()


def cache_info() -> CacheInfo:
    """Entries, hits and misses of this process's cache (never its contents)."""
    return CacheInfo(len(_cache._entries), _cache.hits, _cache.misses)


def clear_scram_cache() -> None:
    """Forget every cached salted password (and the counters)."""
    _cache.clear()
