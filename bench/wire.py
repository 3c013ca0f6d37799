"""A counting TCP proxy that reads the PostgreSQL wire protocol passing through it.

Put between a client and PgBouncer (or PostgreSQL), it records per connection: when it was
opened and closed, SSL requests, round trips (each burst the client sends after hearing
from the server counts as one), the messages the client sent, the SQL text of every simple
query ('Q') and parse ('P') message, and each transaction's span, from the client message
that started it to the server's ReadyForQuery saying "idle" again. Behind PgBouncer in
transaction mode, that span is exactly how long a server connection is held.
"""

import asyncio
import contextlib
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

SSL_REQUEST_CODE = 80877103


@dataclass
class ConnectionLog:
    opened: float
    closed: float | None = None
    ssl_requests: int = 0
    round_trips: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    sql: list[str] = field(default_factory=list)
    transactions: list[tuple[float, float]] = field(default_factory=list)


class _Direction:
    """Incremental parser for one direction of the stream."""

    def __init__(self, *, client: bool) -> None:
        self.buffer = b""
        self.client = client
        self.startup = client  # the client's first packets have no type byte
        self.expect_ssl_answer = False

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer += data
        out: list[tuple[str, bytes]] = []
        while True:
            if not self.client and self.expect_ssl_answer and self.buffer:
                out.append(("ssl-answer", self.buffer[:1]))
                self.buffer = self.buffer[1:]
                self.expect_ssl_answer = False
                continue
            if self.startup:
                if len(self.buffer) < 8:
                    break
                (length,) = struct.unpack("!i", self.buffer[:4])
                if len(self.buffer) < length:
                    break
                (code,) = struct.unpack("!i", self.buffer[4:8])
                body, self.buffer = self.buffer[4:length], self.buffer[length:]
                if code == SSL_REQUEST_CODE:
                    out.append(("ssl-request", body))
                else:
                    out.append(("startup", body))
                    self.startup = False
                continue
            if len(self.buffer) < 5:
                break
            kind = chr(self.buffer[0])
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            body, self.buffer = self.buffer[5 : 1 + length], self.buffer[1 + length :]
            out.append((kind, body))
        return out


class CountingProxy:
    """`async with CountingProxy(host, port) as proxy:` then connect to 127.0.0.1:proxy.port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections: list[ConnectionLog] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    def reset(self) -> None:
        self.connections = [c for c in self.connections if c.closed is None]
        for log in self.connections:
            log.round_trips, log.messages, log.sql, log.transactions = 0, Counter(), [], []

    async def __aenter__(self) -> "CountingProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        log = ConnectionLog(opened=time.perf_counter())
        self.connections.append(log)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            log.closed = time.perf_counter()
            return
        client_side, server_side = _Direction(client=True), _Direction(client=False)
        state = {"heard": True, "idle": True, "txn_started": 0.0, "pending_since": None}

        async def client_to_server() -> None:
            while data := await client_reader.read(65536):
                now = time.perf_counter()
                if state["heard"]:
                    log.round_trips += 1
                    state["heard"] = False
                for kind, body in client_side.feed(data):
                    if kind == "ssl-request":
                        log.ssl_requests += 1
                        server_side.expect_ssl_answer = True
                        continue
                    log.messages[kind] += 1
                    if kind == "X" and log.closed is None:
                        log.closed = now  # Terminate: the client is done with this connection
                    if kind in ("Q", "P"):
                        raw = body[body.index(b"\0") + 1 :] if kind == "P" else body
                        log.sql.append(raw.split(b"\0", 1)[0].decode(errors="replace"))
                    if state["idle"] and state["pending_since"] is None and kind not in ("startup", "p", "X"):
                        state["pending_since"] = now
                server_writer.write(data)
                await server_writer.drain()
            if log.closed is None:
                log.closed = time.perf_counter()
            server_writer.close()

        async def server_to_client() -> None:
            while data := await server_reader.read(65536):
                now = time.perf_counter()
                state["heard"] = True
                for kind, body in server_side.feed(data):
                    if kind != "Z":
                        continue
                    status = body[:1]
                    if status == b"I":
                        if not state["idle"]:
                            log.transactions.append((state["txn_started"], now))
                        state["idle"] = True
                        state["pending_since"] = None
                    elif state["idle"]:
                        state["idle"] = False
                        state["txn_started"] = state["pending_since"] or now
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(client_to_server(), server_to_client())
        if log.closed is None:
            log.closed = time.perf_counter()
