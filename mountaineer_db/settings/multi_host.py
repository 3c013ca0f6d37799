"""Multi-host URLs: several servers in one URL, the client picking by `target_session_attrs`.

`postgresql://app@db1:5432,db2:5432,db3:5432/app?target_session_attrs=read-write` (libpq's
form) and `POSTGRES_HOST=db1,db2,db3` name the members of a high-availability cluster; every
new connection tries them in order and keeps the first that has the wanted role (asyncpg's
`target_session_attrs`, checked at connect time with `SHOW transaction_read_only` and the
server's `in_hot_standby`). After a failover, new connections find the new primary by
themselves: no proxy and no DNS change needed.

Inside the package such a URL is a SQLAlchemy `URL` whose `host` is the normalised list
`db1:5432,db2:5432,db3:5432` (every host with its port) and whose `port` is None; SQLAlchemy
renders it in brackets (`postgresql+asyncpg://app@[db1:5432,db2:5432]/app`), which reads back
as the same URL. `target_session_attrs` is always explicit once the config is built:

- the primary URL (SQLALCHEMY_DATABASE_URI, the POSTGRES_* parts, MIGRATIONS_DATABASE_URI)
  must reach the primary: `read-write` (the default with several hosts) or `primary`;
- a replica URL (DATABASE_REPLICA_URLS) with several hosts reads from a standby:
  `prefer-standby` (the default), `standby` or `read-only`.
"""

import re

from sqlalchemy.engine import URL

__all__ = [
    "PRIMARY_ATTRS",
    "REPLICA_ATTRS",
    "SESSION_ATTRS",
    "HostListError",
    "host_list",
    "hosts_of",
    "is_multi_host",
    "join_hosts",
    "session_attrs_of",
    "split_multi_host_url",
    "with_session_attrs",
]

SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
"""The `target_session_attrs` values asyncpg (and libpq) know."""
PRIMARY_ATTRS = ("read-write", "primary")
REPLICA_ATTRS = ("prefer-standby", "standby", "read-only")

_NETLOC = re.compile(r"^(?P<head>[A-Za-z0-9+.\-]+://(?:[^@/?#]*@)?)(?P<hosts>[^/?#]*)(?P<tail>.*)$", re.DOTALL)
_HOST = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]\s,/]+))(?::(?P<port>[^:]*))?$")


class HostListError(ValueError):
    """A host list that cannot be read (its message starts with "has", after the setting's name)."""


def host_list(text: str, default_port: int, *, what: str = "") -> str:
    """`db1,db2:6432` → `db1:5432,db2:6432`; `HostListError` (after `what`) for an empty host or a bad port."""
    normalised = []
    for number, item in enumerate(text.split(","), start=1):
        item = item.strip()
        match = _HOST.match(item)
        if not item or match is None:
            raise HostListError(
                f"{what}has an empty or malformed host (number {number}); list hosts as HOST[:PORT] separated "
                "by commas, e.g. db1:5432,db2:5432,db3:5432"
            )
        port_text = match.group("port")
        if port_text is None or port_text == "":
            port = default_port
        elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise HostListError(f"{what}has host number {number} with a port that is not a TCP port (1 to 65535)")
        host = f"[{match.group('ipv6')}]" if match.group("ipv6") else match.group("name")
        normalised.append(f"{host}:{port}")
    return ",".join(normalised)


def split_multi_host_url(text: str) -> tuple[str, str | None]:
    """`text` with its host list replaced by a placeholder (for SQLAlchemy's parser), and the
    normalised host list; `(text, None)` when the URL names one host or none."""
    match = _NETLOC.match(text)
    if match is None or "," not in match.group("hosts"):
        return text, None
    hosts = match.group("hosts")
    if hosts.startswith("[") and hosts.endswith("]"):
        hosts = hosts[1:-1]  # SQLAlchemy renders a host holding ":" in brackets: read our own output back
    hosts = host_list(hosts, 5432)
    return f"{match.group('head')}multi-host{match.group('tail')}", hosts


def is_multi_host(url: URL) -> bool:
    return url.host is not None and "," in url.host


def hosts_of(url: URL) -> list[tuple[str, int]]:
    """Every (host, port) a URL names: one pair for a plain URL."""
    if not is_multi_host(url):
        return [(url.host or "localhost", url.port or 5432)]
    pairs = []
    for item in (url.host or "").split(","):
        host, _, port = item.rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def join_hosts(url: URL) -> str:
    """`db1:5432,db2:5432` for a multi-host URL, `db:5432` for a plain one (for messages)."""
    return ",".join(f"{host}:{port}" for host, port in hosts_of(url))


def session_attrs_of(url: URL) -> str | None:
    value = url.query.get("target_session_attrs")
    if isinstance(value, tuple):
        value = value[-1]
    return None if value is None else str(value)


def with_session_attrs(url: URL, *, replica: bool, setting: str) -> URL:
    """`url` with an explicit `target_session_attrs` fit for its role; ValueError naming `setting` if
    the URL asks for the wrong kind of server."""
    attrs = session_attrs_of(url)
    wanted, role = (REPLICA_ATTRS, "a replica") if replica else (PRIMARY_ATTRS, "the primary")
    if attrs is None:
        if not is_multi_host(url):
            return url
        return url.update_query_dict({"target_session_attrs": wanted[0]})
    if attrs not in wanted and (is_multi_host(url) or attrs != "any"):
        raise ValueError(
            f"{setting} has target_session_attrs={attrs}, which does not reach {role}; use "
            f"{' or '.join(wanted)} (with several hosts the default is {wanted[0]})"
        )
    return url
