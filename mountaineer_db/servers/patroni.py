"""A high-availability PostgreSQL cluster on loopback, for failover tests and measurements.

`PatroniCluster` starts, all on 127.0.0.1 and on free ports, as the unprivileged server user
when we are root (as `PostgresCluster` does):

- one etcd (the consensus store Patroni keeps its leader lock in);
- three PostgreSQL 15 nodes, each managed by its own Patroni (one primary, two streaming
  replicas; `synchronous_mode=True` makes one replica synchronous, so a commit is
  acknowledged only once a replica has it);
- HAProxy, routing to whichever node Patroni's REST API calls the primary (`GET /primary`
  checked every 0.5 s; a node that stops being primary has its sessions shut down);
- PgBouncer in transaction mode in front of HAProxy.

Debian/Ubuntu: `apt-get install patroni etcd-server haproxy pgbouncer postgresql`.

```python
with PatroniCluster.temporary() as ha:
    ha.proxy_url()        # through HAProxy: always the primary
    ha.pgbouncer_url()    # PgBouncer -> HAProxy -> primary
    ha.multi_host_url()   # postgresql://app@n1,n2,n3/app?target_session_attrs=read-write
    ha.switchover()       # `patronictl switchover` to a replica, waits for the new primary
    ha.kill_postmaster()  # SIGKILL of the primary's postmaster, waits until a primary is back
```

Every wait is on a state (Patroni's REST `/primary`, `/replica`, `/sync`; HAProxy's view of
its servers; etcd's `/health`), polled, with a deadline that raises `ClusterError` naming what
did not happen and where the logs are. Passwords are in files readable by their owner only
(Patroni's configuration, PgBouncer's user list). Nothing but the processes started here is
ever signalled.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from mountaineer_db.servers._processes import (
    ClusterError,
    as_user,
    chown_tree,
    free_port,
    open_private_log,
    private_directory,
    run_user,
    stop_process,
    write_private,
)
from mountaineer_db.servers.cluster import find_postgres_bindir
from mountaineer_db.servers.patroni_parts import (
    PatroniNode,
    is_postmaster_of,
    missing_ha_tools,
    node_config,
    read_json,
    user_ids,
    wait_for,
    which,
)
from mountaineer_db.servers.pgbouncer import PgBouncer

__all__ = ["PatroniCluster", "PatroniNode", "missing_ha_tools"]

class PatroniCluster:
    """etcd, three Patroni nodes, HAProxy and PgBouncer on loopback (see the module docstring)."""

    APP_USER = "app"
    APP_DATABASE = "app"

    def __init__(
        self,
        work_dir: Path,
        *,
        synchronous_mode: bool = True,
        nodes: int = 3,
        pgbouncer_settings: dict[str, str] | None = None,
    ) -> None:
        missing = missing_ha_tools()
        if missing:
            raise ClusterError(
                f"PatroniCluster needs {', '.join(missing)}; install them with `apt-get install {' '.join(missing)}`."
            )
        self.work_dir = Path(work_dir)
        self.synchronous_mode = synchronous_mode
        self.scope = f"mdb{secrets.token_hex(3)}"
        self.superuser_password = secrets.token_urlsafe(18)
        self.replication_password = secrets.token_urlsafe(18)
        self.app_password = secrets.token_urlsafe(18)
        self.bindir = find_postgres_bindir()
        self._run_as = run_user()
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.haproxy_port = free_port()
        self.pinned_port = free_port()
        self.nodes = [
            PatroniNode(
                name=f"n{number}",
                port=free_port(),
                rest_port=free_port(),
                data_dir=self.work_dir / f"n{number}" / "data",
                config_path=self.work_dir / f"n{number}" / "patroni.yml",
                log_path=self.work_dir / f"n{number}" / "patroni.log",
            )
            for number in range(1, nodes + 1)
        ]
        self._etcd: subprocess.Popen[bytes] | None = None
        self._haproxy: subprocess.Popen[bytes] | None = None
        self._stalled: list[int] = []
        self.pgbouncer = PgBouncer(
            "127.0.0.1",
            self.haproxy_port,
            {self.APP_USER: self.app_password},
            work_dir=self.work_dir / "pgbouncer",
            settings={"default_pool_size": "20", "query_wait_timeout": "15", **(pgbouncer_settings or {})},
        )

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        proxies = f"haproxy :{self.haproxy_port}, pgbouncer :{self.pgbouncer.port}"
        return f"PatroniCluster(nodes 127.0.0.1:{ports}, {proxies})"

    @classmethod
    @contextlib.contextmanager
    def temporary(cls, **kwargs: Any) -> Iterator["PatroniCluster"]:
        """A cluster in a throwaway folder, started on entry, stopped and removed on exit."""
        folder = Path(tempfile.mkdtemp(prefix="mdb-patroni-"))
        try:
            with cls(folder, **kwargs) as cluster:
                yield cluster
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- starting -------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start everything and wait until the primary, its replicas and both proxies serve."""
        deadline = time.monotonic() + timeout
        private_directory(self.work_dir, self._run_as)
        self._start_etcd(deadline)
        for node in self.nodes:
            self._start_node(node)
        self.wait_for_primary(timeout=max(deadline - time.monotonic(), 1))
        self._create_app_role()
        self.wait_for_replicas(timeout=max(deadline - time.monotonic(), 1))
        self._start_haproxy()
        self.wait_for_proxy(timeout=max(deadline - time.monotonic(), 1))
        self.pgbouncer.start()

    def _popen(self, argv: list[str], log: Path, cwd: Path | None = None) -> "subprocess.Popen[bytes]":
        descriptor = open_private_log(log)
        if self._run_as is not None:
            os.fchown(descriptor, *user_ids(self._run_as))
        try:
            return subprocess.Popen(
                argv,
                stdout=descriptor,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.work_dir,
                start_new_session=True,
                **as_user(self._run_as),
            )
        finally:
            os.close(descriptor)

    def _start_etcd(self, deadline: float) -> None:
        folder = private_directory(self.work_dir / "etcd", self._run_as)
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            str(which("etcd")),
            "--name=etcd1",
            f"--data-dir={folder / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=etcd1={peer}",
            f"--initial-cluster-token={self.scope}",
            "--enable-v2=true",
        ]
        self._etcd = self._popen(argv, folder / "etcd.log")

        def healthy() -> bool:
            if self._etcd is not None and self._etcd.poll() is not None:
                raise ClusterError(f"etcd exited during start-up; see {folder / 'etcd.log'}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as answer:
                    return bool(read_json(answer.read()).get("health") == "true")
            except (OSError, ValueError):
                return False

        wait_for("etcd to be healthy", healthy, max(deadline - time.monotonic(), 1), str(folder))

    def _node_config(self, node: PatroniNode) -> dict[str, Any]:
        return node_config(self, node)


    def _start_node(self, node: PatroniNode) -> None:
        folder = private_directory(node.data_dir.parent, self._run_as)
        # JSON is YAML: no YAML writer needed. 0600: it holds the passwords.
        write_private(node.config_path, json.dumps(self._node_config(node), indent=2), owner=self._run_as)
        chown_tree(folder, self._run_as)
        node.process = self._popen([str(which("patroni")), str(node.config_path)], node.log_path, cwd=folder)

    def _start_haproxy(self) -> None:
        folder = private_directory(self.work_dir / "haproxy", self._run_as)
        servers = "\n".join(
            f"    server {node.name} 127.0.0.1:{node.port} maxconn 500 check port {node.rest_port}"
            for node in self.nodes
        )
        pinned = "\n".join(
            f"    server {node.name} 127.0.0.1:{node.port}" + ("" if node is self.nodes[0] else " disabled")
            for node in self.nodes
        )
        config = f"""global
    maxconn 2000
    stats socket {folder / "haproxy.sock"} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s

listen primary
    bind 127.0.0.1:{self.haproxy_port}
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}

# A stand-in for a DNS name or virtual IP that follows the primary late: it routes to the node
# `pin()` names, whatever its role, with no health check.
listen pinned
    bind 127.0.0.1:{self.pinned_port}
{pinned}
"""
        path = folder / "haproxy.cfg"
        write_private(path, config, owner=self._run_as)
        self._haproxy = self._popen([str(which("haproxy")), "-db", "-f", str(path)], folder / "haproxy.log")

    def _create_app_role(self) -> None:
        primary = self.primary()
        sql = (
            f"CREATE ROLE {self.APP_USER} LOGIN PASSWORD '{self.app_password}';"
            f"CREATE DATABASE {self.APP_DATABASE} OWNER {self.APP_USER};"
        )
        for statement in sql.split(";")[:-1]:
            self.psql(statement, node=primary)

    def psql(self, sql: str, *, node: PatroniNode | None = None, database: str = "postgres") -> str:
        """Run `sql` as the superuser on `node` (default: the primary); its output, unaligned."""
        target = node or self.primary()
        environment = {**os.environ, "PGPASSWORD": self.superuser_password, "PGCONNECT_TIMEOUT": "3"}
        result = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres",
             "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, env=environment, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"psql on {target.name} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    # -- state ----------------------------------------------------------------------------

    def primary(self) -> PatroniNode:
        """The node whose Patroni answers `GET /primary` with 200 (exactly one); else ClusterError."""
        leaders = [node for node in self.nodes if node.rest("/primary")[0] == 200]
        if len(leaders) != 1:
            raise ClusterError(f"Expected one primary, found {[node.name for node in leaders]}")
        return leaders[0]

    def replicas(self) -> list[PatroniNode]:
        """The nodes running as streaming replicas (`GET /replica` answers 200)."""
        return [node for node in self.nodes if node.rest("/replica")[0] == 200]

    def sync_standby(self) -> PatroniNode:
        """The synchronous standby (`GET /sync` answers 200): in synchronous mode, the only
        node Patroni promotes or switches over to."""
        found = [node for node in self.nodes if node.rest("/sync")[0] == 200]
        if not found:
            raise ClusterError("No synchronous standby (synchronous_mode is off, or it is not streaming yet)")
        return found[0]

    def _one_primary(self) -> PatroniNode | None:
        try:
            return self.primary()
        except ClusterError:
            return None

    def wait_for_primary(self, *, other_than: str | None = None, timeout: float = 60.0) -> PatroniNode:
        """Wait until exactly one node is primary (and it is not `other_than`); that node."""
        found: list[PatroniNode] = []

        def check() -> bool:
            self._check_alive()
            node = self._one_primary()
            if node is None or node.name == other_than:
                return False
            found.append(node)
            return True

        what = "a primary" + (f" other than {other_than}" if other_than else "")
        wait_for(what, check, timeout, str(self.work_dir))
        return found[-1]

    def wait_for_replicas(self, timeout: float = 60.0) -> None:
        """Wait until every other node streams from the primary (and one is synchronous, in sync mode)."""

        def check() -> bool:
            self._check_alive()
            primary = self._one_primary()
            if primary is None:
                return False
            streaming = primary.rest("/patroni")[1].get("replication") or []
            if sum(1 for row in streaming if row.get("state") == "streaming") < len(self.nodes) - 1:
                return False
            if self.synchronous_mode:
                return any(node.rest("/sync")[0] == 200 for node in self.nodes)
            return True

        wait_for("the replicas to stream from the primary", check, timeout, str(self.work_dir))

    def proxy_backends(self) -> dict[str, str]:
        """HAProxy's status of each node (`UP`, `DOWN`, ...), from its stats socket."""
        try:
            lines = self._haproxy_command("show stat").splitlines()
        except OSError:
            return {}
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        status: dict[str, str] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "primary" and row.get("svname") not in ("FRONTEND", "BACKEND", None):
                status[row["svname"]] = row.get("status", "")
        return status

    def pin(self, node: PatroniNode) -> None:
        """Route new connections to the `pinned` listener (`pinned_url()`) to `node` alone.

        Existing connections stay where they are, as they would after a DNS change.
        """
        for other in self.nodes:
            command = "enable" if other is node else "disable"
            self._haproxy_command(f"{command} server pinned/{other.name}")

    def _haproxy_command(self, command: str) -> str:
        sock_path = self.work_dir / "haproxy" / "haproxy.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(sock_path))
            sock.sendall(command.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def wait_for_proxy(self, timeout: float = 30.0) -> None:
        """Wait until HAProxy sends connections to the primary, and to it alone."""

        def check() -> bool:
            self._check_alive()
            primary = self._one_primary()
            if primary is None:
                return False
            up = [name for name, state in self.proxy_backends().items() if state.startswith("UP")]
            return up == [primary.name]

        wait_for("HAProxy to route to the primary alone", check, timeout, str(self.work_dir))

    def _check_alive(self) -> None:
        for label, process in (("etcd", self._etcd), ("haproxy", self._haproxy)):
            if process is not None and process.poll() is not None:
                raise ClusterError(f"{label} exited (code {process.returncode}); see the logs in {self.work_dir}")

    # -- URLs -----------------------------------------------------------------------------

    def _url(self, host: str, port: int | None, query: dict[str, str] | None = None) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=self.APP_USER,
            password=self.app_password,
            host=host,
            port=port,
            database=self.APP_DATABASE,
            query=query or {},
        )

    def proxy_url(self) -> URL:
        """The app user's URL through HAProxy (always the current primary)."""
        return self._url("127.0.0.1", self.haproxy_port)

    def pgbouncer_url(self) -> URL:
        """The app user's URL through PgBouncer (transaction mode), which goes through HAProxy."""
        return self._url("127.0.0.1", self.pgbouncer.port)

    def pinned_url(self) -> URL:
        """The app user's URL through the `pinned` listener (see `pin`): the first node until pinned elsewhere."""
        return self._url("127.0.0.1", self.pinned_port)

    def node_url(self, node: PatroniNode) -> URL:
        """The app user's URL straight to one node."""
        return self._url("127.0.0.1", node.port)

    def multi_host_url(self, target_session_attrs: str = "read-write") -> str:
        """`postgresql://app:...@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/app?target_session_attrs=...`, as text."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return (
            f"postgresql://{self.APP_USER}:{self.app_password}@{hosts}/{self.APP_DATABASE}"
            f"?target_session_attrs={target_session_attrs}"
        )

    # -- faults ---------------------------------------------------------------------------

    def patronictl(self, *args: str) -> str:
        """Run `patronictl -c <first node's config> ARGS`; its output (ClusterError if it fails)."""
        result = subprocess.run(
            [str(which("patronictl")), "-c", str(self.nodes[0].config_path), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"patronictl {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def switchover(self, candidate: str | None = None, timeout: float = 60.0) -> PatroniNode:
        """`patronictl switchover` from the primary to `candidate` (a replica by default).

        Returns once the new primary is up, HAProxy routes to it and the replicas stream again.
        """
        old = self.primary()
        if candidate is None:
            candidate = (self.sync_standby() if self.synchronous_mode else self.replicas()[0]).name
        self.patronictl("switchover", self.scope, "--leader", old.name, "--candidate", candidate, "--force")
        new = self.wait_for_primary(other_than=old.name, timeout=timeout)
        self.wait_for_proxy(timeout=timeout)
        self.wait_for_replicas(timeout=timeout)
        return new

    def kill_postmaster(self, timeout: float = 60.0) -> PatroniNode:
        """SIGKILL the primary's postmaster; returns once a primary serves again (Patroni restarts
        the same node, as it still holds the leader lock) and HAProxy routes to it."""
        primary = self.primary()
        pid = primary.postmaster_pid()
        if pid is None:
            raise ClusterError(f"No postmaster.pid in {primary.data_dir}")
        os.kill(pid, signal.SIGKILL)
        # Patroni notices the dead postmaster at its next loop and starts a new one.
        wait_for(
            f"Patroni to restart {primary.name}'s postmaster",
            lambda: primary.postmaster_pid() not in (None, pid),
            timeout,
            str(self.work_dir),
        )
        self.wait_for_primary(timeout=timeout)
        self.wait_for_proxy(timeout=timeout)
        return self.primary()

    def stall_replication(self) -> list[int]:
        """SIGSTOP the primary's WAL senders (a network stall between primary and replicas).

        With synchronous replication commits now wait; with asynchronous replication they are
        acknowledged without reaching any replica, and `kill_node()` then loses them. The
        senders are killed by `kill_node()`; nothing else resumes them.
        """
        primary = self.primary()
        pids = [int(pid) for pid in self.psql("SELECT pid FROM pg_stat_replication", node=primary).split()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self._stalled.extend(pids)
        return pids

    def kill_node(self, timeout: float = 60.0) -> tuple[PatroniNode, PatroniNode]:
        """SIGKILL the primary's Patroni and postmaster together (the machine dies): after the
        leader lock expires (ttl 10 s) a replica is promoted. Returns (old, new) once HAProxy
        routes to the new primary; `restart_node(old)` brings the old one back as a replica."""
        old = self.primary()
        pid = old.postmaster_pid()
        if old.process is not None:
            old.process.kill()
            old.process.wait(10)
            old.process = None
        if pid is not None and is_postmaster_of(pid, old.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for stalled in self._stalled:  # stopped WAL senders would never notice the dead postmaster
            with contextlib.suppress(ProcessLookupError):
                os.kill(stalled, signal.SIGKILL)
        self._stalled = []
        new = self.wait_for_primary(other_than=old.name, timeout=timeout)
        self.wait_for_proxy(timeout=timeout)
        return old, new

    def restart_node(self, node: PatroniNode, timeout: float = 90.0) -> None:
        """Start `node`'s Patroni again (after `kill_node`); returns once every replica streams."""
        pid = node.postmaster_pid()
        if pid is not None and is_postmaster_of(pid, node.data_dir):  # an orphan backend may hold it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._start_node(node)
        self.wait_for_replicas(timeout=timeout)
        self.wait_for_proxy(timeout=timeout)

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything started here, by PID: proxies, Patroni (which stops PostgreSQL), etcd."""
        self.pgbouncer.stop()
        if self._haproxy is not None:
            stop_process(self._haproxy, signal.SIGTERM, 10)
            self._haproxy = None
        running = [node for node in self.nodes if node.process is not None and node.process.poll() is None]
        for node in running:  # all at once: each Patroni stops its PostgreSQL (fast shutdown)
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for node in self.nodes:
            if node.process is not None:
                stop_process(node.process, signal.SIGTERM, 30)
                node.process = None
        for node in self.nodes:
            # A postmaster outlives a Patroni that was killed; it is ours (our data directory).
            pid = node.postmaster_pid()
            if pid is not None and is_postmaster_of(pid, node.data_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
        if self._etcd is not None:
            stop_process(self._etcd, signal.SIGTERM, 10)
            self._etcd = None

    def __enter__(self) -> "PatroniCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

