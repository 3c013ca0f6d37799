"""The parts of `mountaineer_db.servers.patroni`: finding the tools, one node, Patroni's configuration,
waiting on states."""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mountaineer_db.servers._processes import ClusterError
from mountaineer_db.servers.pgbouncer import find_pgbouncer

if TYPE_CHECKING:
    from mountaineer_db.servers.patroni import PatroniCluster

__all__ = [
    "PatroniNode",
    "is_postmaster_of",
    "missing_ha_tools",
    "node_config",
    "read_json",
    "user_ids",
    "wait_for",
    "which",
]

_TOOLS = {"etcd": "etcd-server", "patroni": "patroni", "patronictl": "patroni", "haproxy": "haproxy"}
_SBIN = ("/usr/sbin", "/usr/local/sbin")


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def missing_ha_tools() -> list[str]:
    """The Debian packages still to install for `PatroniCluster` (empty when all are there)."""
    missing = sorted({package for tool, package in _TOOLS.items() if which(tool) is None})
    if find_pgbouncer() is None:
        missing.append("pgbouncer")
    return missing


@dataclass
class PatroniNode:
    """One Patroni-managed PostgreSQL node."""

    name: str
    port: int
    rest_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: "subprocess.Popen[bytes] | None" = None

    def rest(self, path: str, timeout: float = 1.0) -> tuple[int, dict[str, Any]]:
        """GET Patroni's REST `path` on this node: (status, JSON body); (0, {}) when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=timeout) as answer:
                return answer.status, read_json(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, read_json(error.read())
        except (OSError, ValueError):
            return 0, {}

    def postmaster_pid(self) -> int | None:
        """The PID in the data directory's `postmaster.pid`, if the server is running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None


def read_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def wait_for(what: str, check: Callable[[], bool], timeout: float, logs: str, interval: float = 0.05) -> None:
    """Poll `check` until it is true; `ClusterError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"Timed out after {timeout:g}s waiting for {what}; see the logs in {logs}")
        time.sleep(interval)


def node_config(cluster: "PatroniCluster", node: PatroniNode) -> dict[str, Any]:
    """Patroni's configuration for `node` (written as JSON, which is YAML)."""
    where = str(node.data_dir.parent)
    return {
        "scope": cluster.scope,
        "name": node.name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"127.0.0.1:{node.rest_port}",
            "connect_address": f"127.0.0.1:{node.rest_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{cluster.etcd_port}"]},
        "bootstrap": {
            "dcs": {
                # Patroni's rule: loop_wait + 2 * retry_timeout <= ttl.
                "ttl": 10,
                "loop_wait": 2,
                "retry_timeout": 4,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": cluster.synchronous_mode,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "max_connections": 200,
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "scram-sha-256"}],
            "pg_hba": [
                "local all all scram-sha-256",
                "host replication replicator 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.port}",
            "connect_address": f"127.0.0.1:{node.port}",
            "data_dir": str(node.data_dir),
            "bin_dir": str(cluster.bindir),
            "pgpass": f"{where}/pgpass",
            # pg_basebackup's default spread checkpoint makes a new replica wait minutes.
            "basebackup": [{"checkpoint": "fast"}],
            "authentication": {
                "superuser": {"username": "postgres", "password": cluster.superuser_password},
                "replication": {"username": "replicator", "password": cluster.replication_password},
                "rewind": {"username": "postgres", "password": cluster.superuser_password},
            },
            "parameters": {
                "unix_socket_directories": where,
                "fsync": "off",  # throwaway data on a shared test machine; failover semantics unchanged
                "log_min_messages": "warning",
            },
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def is_postmaster_of(pid: int, data_dir: Path) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(data_dir).encode() in command


def user_ids(user: str) -> tuple[int, int]:
    import pwd  # only when we are root and hand files to the server user

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
