"""Which PgBouncer executables are there, and which versions: for tests that need PgBouncer >= 1.21.

Debian 12 ships PgBouncer 1.18, without protocol-level prepared statements; the suite builds
1.24 from Debian 13's source package (`scripts/build_pgbouncer.sh`) into a cache directory.

```python
binary = find_pgbouncer_at_least((1, 21))  # None when no such build is there
```
"""

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mountaineer_db.servers._processes import as_user, run_user
from mountaineer_db.servers.pgbouncer import find_pgbouncer

__all__ = ["BUILD_HINT", "cache_dir", "find_pgbouncer_at_least", "pgbouncer_version"]

BUILD_HINT = "build one with `bash scripts/build_pgbouncer.sh` (PgBouncer 1.24 from Debian 13's source package)"


def cache_dir() -> Path:
    """Where `scripts/build_pgbouncer.sh` keeps its builds (MOUNTAINEER_DB_CACHE, else ~/.cache/mountaineer-db)."""
    return Path(os.environ.get("MOUNTAINEER_DB_CACHE") or Path.home() / ".cache" / "mountaineer-db")


@functools.cache
def pgbouncer_version(binary: Path) -> tuple[int, int, int] | None:
    """The version `binary --version` reports (`PgBouncer 1.24.1`), or None if it does not run."""
    try:
        output = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    found = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", output)
    if found is None:
        return None
    return int(found[1]), int(found[2]), int(found[3] or 0)


def _candidates() -> list[Path]:
    found = [Path(p) for p in os.environ.get("MOUNTAINEER_DB_PGBOUNCERS", "").split(os.pathsep) if p]
    system = find_pgbouncer()
    if system is not None:
        found.append(system)
    found.extend(sorted(cache_dir().glob("pgbouncer-*/bin/pgbouncer"), reverse=True))
    return found


def find_pgbouncer_at_least(version: tuple[int, int]) -> Path | None:
    """A PgBouncer executable of `version` or newer that the suite's servers can run, or None.

    Looks at MOUNTAINEER_DB_PGBOUNCERS (paths separated by `os.pathsep`), the system's
    PgBouncer, then the builds in `cache_dir()`. A build under a directory the unprivileged
    user servers run as cannot enter (root's home) is copied to a readable place first.
    """
    for binary in _candidates():
        found = pgbouncer_version(binary)
        if found is not None and found[:2] >= version:
            return _runnable(binary)
    return None


@functools.cache
def _runnable(binary: Path) -> Path:
    user = run_user()
    if user is None:
        return binary
    # Servers run as an unprivileged user when we are root; root's home is closed to it.
    try:
        runs = subprocess.run([str(binary), "--version"], capture_output=True, check=False, **as_user(user))
    except OSError:  # not even reachable by that user
        runs = None
    if runs is not None and runs.returncode == 0:
        return binary
    directory = Path(tempfile.mkdtemp(prefix="mountaineer-db-pgbouncer-"))
    directory.chmod(0o755)
    copy = directory / "pgbouncer"
    shutil.copy2(binary, copy)
    copy.chmod(0o755)
    return copy
