"""Rewrite flat-layout module paths (before issue 24) to the folders: imports, strings, file paths.

    .venv/bin/python scripts/relayout_imports.py FILE...       # rewrites in place, prints what changed

For code written against the flat layout: a branch started before the regrouping, or an app
that imported internal modules. It rewrites `mountaineer_db.engine` → `mountaineer_db.engines.engine`
(imports, `monkeypatch.setattr("mountaineer_db.engine.x", ...)` targets, docs),
`mountaineer_db/engine.py` → `mountaineer_db/engines/engine.py` (mutant anchors, docs), and
`from mountaineer_db import admin` → `from mountaineer_db.migrations import admin`, and follows
the names that moved out of their module (metrics snapshots, the replicated request session).
Review the result (`ruff check --select I --fix` sorts the imports again).
"""

import re
import sys
from pathlib import Path

MOVES = {
    "_blocking": "servers._blocking",
    "_processes": "servers._processes",
    "admin": "migrations.admin",
    "appconfig": "settings.appconfig",
    "cluster": "servers.cluster",
    "commit_hooks": "requests.commit_hooks",
    "config": "settings.config",
    "config_checks": "settings.checks",
    "connections": "engines.connections",
    "data_errors": "engines.data_errors",
    "dependencies": "requests.dependencies",
    "embedded": "servers.embedded",
    "engine": "engines.engine",
    "failure_log": "requests.failure_log",
    "fair_pool": "engines.fair_pool",
    "health": "observability.health",
    "http_errors": "requests.http_errors",
    "lifespan": "requests.lifespan",
    "metrics": "engines.metrics",
    "origins": "engines.origins",
    "pgbouncer": "servers.pgbouncer",
    "prometheus": "observability.prometheus",
    "read_sessions": "requests.read_sessions",
    "read_your_writes": "replicas.read_your_writes",
    "replicas": "replicas.replica_set",
    "replication": "servers.replication",
    "rerender": "requests.rerender",
    "retries": "requests.retries",
    "scram": "engines.scram",
    "session": "requests.session",
    "setting_sources": "settings.sources",
    "setup_errors": "requests.setup_errors",
    "slow_queries": "engines.slow_queries",
    "stale_statements": "engines.stale_statements",
    "tracing": "observability.tracing",
    "urls": "settings.urls",
}
# Names that left their module when cycles were broken: (new module of the old one, name) -> module.
NAMES_MOVED = {
    ("engines.metrics", "EngineMetrics"): "observability.metrics",
    ("engines.metrics", "engine_metrics"): "observability.metrics",
    ("engines.metrics", "database_metrics"): "observability.metrics",
    ("replicas.read_your_writes", "ReplicatedRequestSession"): "requests.replicated_session",
}

_OLD = "|".join(sorted(MOVES, key=len, reverse=True))
# Not `mountaineer_db.replicas.replica_set` and the like: paths of the new layout stay as they are.
_NEW_IN_REPLICAS = r"(?:\.|[ \t]+import[ \t]+)(?:replica_set|read_your_writes)\b"
_DOTTED = re.compile(r"(?<![\w.])mountaineer_db\.(" + _OLD + r")\b(?!/|" + _NEW_IN_REPLICAS + ")")
_SLASHED = re.compile(r"(?<![\w/])mountaineer_db/(" + _OLD + r")\.py\b")
_FROM_PACKAGE = re.compile(r"^([ \t]*)from mountaineer_db import ([\w ,]+?)([ \t]*(?:#.*)?)$", re.MULTILINE)
_FROM_MODULE = re.compile(r"^([ \t]*)from mountaineer_db\.([\w.]+) import ([\w ,]+?)([ \t]*(?:#.*)?)$", re.MULTILINE)


def _from_package(match: re.Match[str]) -> str:
    indent, names, tail = match.groups()
    kept, moved = [], []
    for part in (p.strip() for p in names.split(",") if p.strip()):
        name, _, alias = (bit.strip() for bit in part.partition(" as "))
        if name not in MOVES:
            kept.append(part)
            continue
        folder, base = MOVES[name].rsplit(".", 1)
        alias = alias or (name if base != name else "")
        moved.append(f"{indent}from mountaineer_db.{folder} import {base}" + (f" as {alias}" if alias else ""))
    if not moved:
        return match.group(0)
    lines = ([f"{indent}from mountaineer_db import {', '.join(kept)}"] if kept else []) + moved
    lines[0] += tail
    return "\n".join(lines)


def _from_module(match: re.Match[str]) -> str:
    indent, module, names, tail = match.groups()
    groups: dict[str, list[str]] = {}
    for part in (p.strip() for p in names.split(",") if p.strip()):
        target = NAMES_MOVED.get((module, part.partition(" as ")[0].strip()), module)
        groups.setdefault(target, []).append(part)
    if list(groups) == [module]:
        return match.group(0)
    lines = [f"{indent}from mountaineer_db.{target} import {', '.join(parts)}" for target, parts in groups.items()]
    lines[0] += tail
    return "\n".join(lines)


def rewrite(text: str) -> str:
    text = _DOTTED.sub(lambda m: "mountaineer_db." + MOVES[m.group(1)], text)
    text = _SLASHED.sub(lambda m: "mountaineer_db/" + MOVES[m.group(1)].replace(".", "/") + ".py", text)
    text = _FROM_PACKAGE.sub(_from_package, text)
    return _FROM_MODULE.sub(_from_module, text)


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
