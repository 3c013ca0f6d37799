"""Capturing after-commit hooks in tests, where the per-test transaction never commits.

```python
from mountaineer_db.testing import captured_on_commit

async def test_signup_sends_the_welcome_mail(mdb_client, outbox):
    with captured_on_commit(execute=True) as callbacks:
        response = await mdb_client.post("/internal/api/signup_controller/sign_up", json={...})
    assert response.status_code == 200
    assert len(callbacks) == 1 and outbox == ["welcome"]
```
"""

import contextlib
from collections.abc import Iterator

from mountaineer_db.requests.commit_hooks import CommitHook, capturing

__all__ = ["captured_on_commit"]


@contextlib.contextmanager
def captured_on_commit(*, execute: bool = False) -> Iterator[list[CommitHook]]:
    """The hooks (`on_commit` callbacks) of every commit inside the block, in the order they ran.

    The test kit's sessions run inside a transaction that is rolled back after the test, so
    their commits only release a savepoint and their hooks never run on their own. Inside this
    block they are collected instead, as they would have run; with `execute=True` they are also
    run, at the point where the code under test commits (as they would be in production). A
    hook registered in a transaction that rolls back is neither collected nor run.

    Sessions that really commit (a `database_session()` of their own) run their hooks as
    usual; those are collected too. Like Django's `captureOnCommitCallbacks`; the pytest
    fixture `mdb_captured_on_commit` returns this function.
    """
    with capturing(execute=execute) as callbacks:
        yield callbacks
