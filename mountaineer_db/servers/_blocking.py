"""Run blocking work from synchronous and asynchronous callers alike.

The embedded server and the test kit offer synchronous APIs that are also called from async
code (an ASGI lifespan, an async test). Blocking work, or an `asyncio.run` of its own, must
not run on the caller's event loop thread: there it runs on a short-lived helper thread.
"""

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_blocking(work: Callable[[], T], *, thread_name: str) -> T:
    """Run `work` here, or on a helper thread named `thread_name` when this thread runs an event loop.

    Its result is returned and its exception re-raised in the caller's thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # noqa: BLE001 - handed back to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]], *, thread_name: str) -> T:
    """Run the coroutine `make()` to completion on an event loop of its own (see `run_blocking`)."""
    return run_blocking(lambda: asyncio.run(make()), thread_name=thread_name)
