"""Starting and stopping the local server processes the kit and the embedded database run.

PostgreSQL refuses to run as root, so when we are root every server runs as an unprivileged
user (`nobody` unless MOUNTAINEER_DB_SERVER_USER says otherwise) that owns its files.
"""

import contextlib
import os
import pwd
import socket
import subprocess
from pathlib import Path
from typing import Any

from mountaineer_db.exceptions import (
    ClusterError,  # defined there with every other error
    )

__all__ = ["ClusterError", "as_user", "chown_tree", "free_port", "run_user", "stop_process"]

UNPRIVILEGED_USER = os.environ.get("MOUNTAINEER_DB_SERVER_USER", "nobody")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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
