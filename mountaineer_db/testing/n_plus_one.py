"""Finding N+1 queries in a test: `assert_no_n_plus_one()`, next to `assert_num_queries`.

```python
from mountaineer_db.testing import assert_no_n_plus_one

async def test_the_todo_list_loads_owners_in_one_query(mdb_client, mdb_app_session):
    mdb_app_session.add_all([Todo(description=f"t{i}", owner=Owner(name=f"o{i}")) for i in range(3)])
    await mdb_app_session.commit()
    with assert_no_n_plus_one():
        await mdb_client.get("/todos")
```

The block fails (`AssertionError`) when one statement shape ran more than `threshold` times
(default 1: no statement twice) for the same controller/action: the same query with other
parameter values, as a loop over rows runs it. Statements are grouped by the controller and
action that ran them (`HomeController.add_todo` and its re-render `HomeController.render` are
counted apart); the test's own statements form a group of their own. What counts is what
`assert_num_queries` counts: every statement through any engine of this process (or only
`session`'s), transaction bookkeeping and the library's own statements left out. The error names
each repeated statement (text only, never parameters), its count and where it ran.

Seed at least `threshold + 1` parent rows, or a loop over them cannot show.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.n_plus_one import repeated_statements
from mountaineer_db.engines.origins import current_origin
from mountaineer_db.testing.queries import _SessionStatements

__all__ = ["StatementsByOrigin", "assert_no_n_plus_one"]


@dataclass
class StatementsByOrigin:
    """The statements a block ran, counted by controller/action (None: outside any request) and text."""

    counts: dict[str | None, dict[str, int]] = field(default_factory=dict)

    def repeated(self, threshold: int) -> list[tuple[str | None, str, int]]:
        """(origin, statement shape, count) of each shape run more than `threshold` times for one origin."""
        found = []
        for origin, counts in self.counts.items():
            found += [(origin, shape, count) for shape, count in repeated_statements(counts, threshold)]
        return found


class _Recorder(_SessionStatements):
    def __init__(self, session: AsyncSession | None) -> None:
        super().__init__(session)
        self.log = StatementsByOrigin()

    def on_execute(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not self.watches(conn, context):
            return
        with self.lock:
            counts = self.log.counts.setdefault(current_origin(), {})
            counts[statement] = counts.get(statement, 0) + 1


@contextlib.contextmanager
def assert_no_n_plus_one(threshold: int = 1, *, session: AsyncSession | None = None) -> Iterator[StatementsByOrigin]:
    """Fail if one statement shape runs more than `threshold` times for one controller/action in the block."""
    if threshold < 1:
        raise ValueError(f"threshold is {threshold}; use 1 or more (the runs of one statement allowed per action).")
    recorder = _Recorder(session)
    with recorder.listening():
        yield recorder.log
    repeated = recorder.log.repeated(threshold)
    if repeated:
        lines = [f"- {count} times in {origin or 'the test itself'}: {shape}" for origin, shape, count in repeated]
        raise AssertionError(
            f"N+1 queries: {len(repeated)} statement{'s' if len(repeated) > 1 else ''} ran more than "
            f"{threshold} time{'s' if threshold > 1 else ''} for one controller/action (threshold={threshold}):\n"
            + "\n".join(lines)
            + '\nLoad the related rows with the query that fetches the parents (see "Loading related rows").'
        )
