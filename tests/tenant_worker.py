"""One worker process of the tenant leak test: interleaved requests of two tenants, a JSON summary.

Usage: python -m tests.tenant_worker REQUESTS CONCURRENCY, with WORKER_DATABASE_URL,
WORKER_POOL_TYPE (NULL or FIXED_PROCESS) and WORKER_EXPECTED (JSON: tenant -> its number of
notes) in the environment. Requests go through the sample app (`tests.sample_apps.tenant_app`)
in turn: tenant a, tenant b, no tenant header (must be 403), a session without a tenant (must
see '' and no row), and tenant a leaving a session-level value of the setting behind.
Every transaction of every request is checked: its setting is its own tenant's (or ''), and
it sees exactly its own tenant's rows.
"""

import asyncio
import json
import os
import sys
from typing import Any

import httpx

REQUEST_BOUND = 10.0


async def run(requests: int, concurrency: int) -> dict[str, Any]:
    from mountaineer.config import unregister_config

    from mountaineer_db import dispose_engines
    from tests.sample_apps.tenant_app.app import TenantAppConfig, build_app

    unregister_config()
    pool = os.environ["WORKER_POOL_TYPE"]
    extra: dict[str, Any] = {"DATABASE_STATEMENT_CACHE_SIZE": 0}
    if pool == "FIXED_PROCESS":
        extra |= {"DATABASE_POOL_SIZE": 2, "DATABASE_MAX_OVERFLOW": 0}
    config = TenantAppConfig(
        SQLALCHEMY_DATABASE_URI=os.environ["WORKER_DATABASE_URL"], DATABASE_POOL_TYPE=pool, **extra
    )
    app = build_app(config)
    expected: dict[str, int] = json.loads(os.environ["WORKER_EXPECTED"])
    kinds = ("a", "b", "missing", "plain", "poison")
    violations: list[str] = []
    checked = {"transactions": 0, "requests": 0}
    semaphore = asyncio.Semaphore(concurrency)

    def check(kind: str, response: httpx.Response) -> None:
        if kind == "missing":
            if response.status_code != 403:
                violations.append(f"no tenant: {response.status_code} {response.text[:200]}")
            return
        if response.status_code != 200:
            violations.append(f"{kind}: {response.status_code} {response.text[:200]}")
            return
        tenant = "a" if kind == "poison" else kind
        for transaction in response.json()["transactions"]:
            checked["transactions"] += 1
            if kind == "plain":
                wanted = {"setting": "", "tenants": [], "rows": 0}
            else:
                wanted = {"setting": tenant, "tenants": [tenant], "rows": expected[tenant]}
            if transaction != wanted:
                violations.append(f"{kind}: saw {transaction}, expected {wanted}")

    async def one(client: httpx.AsyncClient, n: int) -> None:
        kind = kinds[n % len(kinds)]
        path = {"plain": "/probe-plain", "poison": "/probe?poison=1"}.get(kind, "/probe")
        headers = {} if kind in ("missing", "plain") else {"x-tenant": "a" if kind == "poison" else kind}
        async with semaphore:
            try:
                async with asyncio.timeout(REQUEST_BOUND):
                    response = await client.get(path, headers=headers)
            except Exception as error:  # noqa: BLE001 - reported, the test fails on it
                violations.append(f"{kind}: {type(error).__name__}: {error}")
                return
        checked["requests"] += 1
        check(kind, response)

    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tenant.test") as client:
        await asyncio.gather(*(one(client, n) for n in range(requests)))
    await dispose_engines()
    return {"violations": violations[:10], "violation_count": len(violations), **checked}


def main() -> None:
    requests, concurrency = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(asyncio.run(run(requests, concurrency))))


if __name__ == "__main__":
    main()
