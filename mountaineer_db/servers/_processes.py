"""Starting and stopping the local server processes the kit and the embedded database run.

PostgreSQL refuses to run as root, so when we are root every server runs as an unprivileged
user (`nobody` unless MOUNTAINEER_DB_SERVER_USER says otherwise) that owns its files.

Files that hold a secret (a password, PgBouncer's user list, the embedded database's state,
a server's log) are written with `write_private`: created with mode 0600 from their first
byte, whatever the umask, and renamed into place whole, inside folders made with
`private_directory` (0700). No other local user can read them, even for an instant.
"""

import contextlib
import fcntl
import os
import pwd
import random
import socket
import subprocess
from pathlib import Path
from typing import Any

from mountaineer_db.exceptions import (
    ClusterError,  # defined there with every other error
)

__all__ = [
    "ClusterError",
    "as_user",
    "chown_tree",
    "free_port",
    "open_private_log",
    "private_directory",
    "run_user",
    "stop_process",
    "write_private",
]

UNPRIVILEGED_USER = os.environ.get("MOUNTAINEER_DB_SERVER_USER", "nobody")


# Ports are handed out below the kernel's ephemeral range (where `bind(0)` and every outgoing
# connection take theirs, so a port found free there can be taken a moment later by anyone),
# and reserved for the life of this process: a byte-range lock at the port's offset in one
# shared file, which other processes using `free_port` respect and the kernel releases when
# this process exits. A server restarted on its port (tests stop and start servers) finds
# it still its own. MOUNTAINEER_DB_PORT_RANGE=LOW-HIGH chooses another range.
_PORT_LOCKS = Path(os.environ.get("MOUNTAINEER_DB_PORT_LOCKS", "/tmp/mountaineer-db-ports.lock"))
_reserved: set[int] = set()
_lock_file: int | None = None
_random = random.Random()


def _port_range() -> tuple[int, int]:
    setting = os.environ.get("MOUNTAINEER_DB_PORT_RANGE")
    if setting:
        low, _, high = setting.partition("-")
        return int(low), int(high)
    ephemeral_low = 32768
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return (20000, ephemeral_low - 1) if ephemeral_low > 21000 else (ephemeral_low // 2, ephemeral_low - 1)


def _lock_port(port: int) -> bool:
    """Take this process's lock on `port` in the shared file; False when another process holds it."""
    global _lock_file
    if _lock_file is None:
        _lock_file = os.open(_PORT_LOCKS, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):  # a file another user made stays theirs; locking it still works
            os.fchmod(_lock_file, 0o666)
    try:
        fcntl.lockf(_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    return True


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, reserved for this process.

    Reserved, not guessed: no other caller of `free_port` (in this process or any other)
    gets it while this process lives, and the kernel does not hand it to outgoing
    connections (it is below the ephemeral range).
    """
    low, high = _port_range()
    for _ in range(2000):
        port = _random.randint(low, high)
        if port in _reserved or not _bindable(port):
            continue
        try:
            locked = _lock_port(port)
        except OSError:  # no shared lock file here (read-only /tmp): fall back to the kernel's choice
            break
        if locked:
            _reserved.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run the child as `user` (only when we are root)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    environment = {**os.environ, "HOME": "/tmp", "USER": user, "LOGNAME": user}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": environment}


def run_user() -> str | None:
    """The user servers run as: an unprivileged one when we are root, else ourselves (None)."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def chown_tree(path: Path, user: str | None) -> None:
    """Give `path` and everything under it to `user` (nothing to do when None)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _ids(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def private_directory(path: Path, owner: str | None = None) -> Path:
    """`path` as a folder only its owner may enter (0700), created when missing.

    `owner` is the server user when we are root (the server must reach what is inside; root
    needs no permission), else None: the folder stays ours.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    ids = _ids(owner)
    if ids is not None:
        os.chown(path, *ids)
    return path


def write_private(path: Path, content: str | bytes, *, owner: str | None = None) -> None:
    """Replace `path` with `content`, readable by its owner only (0600) from the first byte.

    A temporary file next to it is created exclusively with mode 0600 (the umask can only take
    bits away), given to `owner` before anything is written (when we are root and a server
    must read it), then renamed over `path`: readers see the old file or the new one, whole.
    """
    data = content.encode() if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # left by a writer that was killed
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        ids = _ids(owner)
        if ids is not None:
            os.fchown(descriptor, *ids)
        with os.fdopen(descriptor, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.replace(temporary, path)


def open_private_log(path: Path) -> int:
    """A descriptor appending to the log `path`, created 0600 when missing (logs quote statements).

    A log left readable by an older version is made private too.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if os.fstat(descriptor).st_mode & 0o077:
        os.fchmod(descriptor, 0o600)
    return descriptor


def stop_process(process: "subprocess.Popen[bytes]", sig: int, timeout: float) -> None:
    """Signal our own child process, wait for it, and kill it if it does not stop in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)
