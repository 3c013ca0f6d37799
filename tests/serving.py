"""Serving the sample app (`migrapp.serve`) under uvicorn, in its own process, under steady load:
for the tests that migrate while it serves."""

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.sample_apps import PYTHON

ADD_PATH = "/internal/api/items_controller/add_item"
PEEK_PATH = "/internal/api/items_controller/peek"


@dataclass
class Load:
    """Every request's outcome: (path, status, body start); status 0 is a transport error."""

    outcomes: list[tuple[str, int, str]] = field(default_factory=list)

    def failures(self) -> list[tuple[str, int, str]]:
        return [outcome for outcome in self.outcomes if outcome[1] != 200]


@contextlib.contextmanager
def uvicorn(root: Path, env: dict[str, str], port: int, name: str = "server") -> Iterator[Path]:
    """`migrapp.serve` under uvicorn in its own process (`root` holds the package); yields its log file."""
    log = root / f"{name}.log"
    argv = [PYTHON, "-m", "uvicorn", "migrapp.serve:create_app", "--factory", "--host", "127.0.0.1"]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--log-level", "warning"], cwd=root, env=env, stdout=output, stderr=output
        )
    try:
        yield log
    finally:
        process.terminate()
        process.wait(timeout=30)


async def wait_until_serving(client: httpx.AsyncClient, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.post(PEEK_PATH, json={})).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the app did not start: {log.read_text()[-2000:]}")


@contextlib.asynccontextmanager
async def steady_load(
    client: httpx.AsyncClient, load: Load, concurrency: int = 6, pause: float = 0.0
) -> AsyncIterator[None]:
    """Each worker alternates an ORM insert action (with its re-render) and a raw SELECT *,
    pausing `pause` seconds between two requests (a paced load leaves CPU to other processes)."""
    stop = asyncio.Event()

    async def worker(number: int) -> None:
        sent = 0
        while not stop.is_set():
            sent += 1
            path, body = (ADD_PATH, {"title": f"w{number}-{sent}"}) if sent % 2 else (PEEK_PATH, {})
            try:
                response = await client.post(path, json=body)
                load.outcomes.append((path, response.status_code, response.text[:300]))
            except httpx.HTTPError as error:
                load.outcomes.append((path, 0, repr(error)))
            if pause:
                await asyncio.sleep(pause)

    tasks = [asyncio.create_task(worker(number)) for number in range(concurrency)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
