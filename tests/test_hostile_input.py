"""Property-based: whatever a stranger sends to a real app, no 500 from the database layer, no value in a log.

Arbitrary text (NUL, unpaired surrogates, 1 MB strings), integers of any size, floats with nan
and inf, and malformed JSON go through a real action and real renders of a Mountaineer app
(`tests/hostile_app.py`) on the real PostgreSQL. For each example: the answer is a success or a
4xx (a 422 naming the kind of problem, a 404 for an id no row can have), the value is in no
log record of any logger, and the app still serves a plain request afterwards. The examples
are fixed (`derandomize=True`) and few, so the suite stays fast and never flaky.
"""

import itertools
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from mountaineer_db import DatabaseConfig
from mountaineer_db.engines.engine import engine_for
from tests.hostile_app import ACTIONS, SCHEMA, HostileConfig, assert_never_logged, build_app, logged_text

pytestmark = pytest.mark.slow

FIXED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # The app, its client and caplog are made once per test and shared by its examples, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

KINDS = {
    "The text holds a character the database cannot store (such as a NUL character).",
    "A number is outside the range the database can store.",
    "A value does not have the type the database expects.",
    "A text is longer than the database allows.",
}
INT32 = range(-(2**31), 2**31)
UNSTORABLE = ("\x00", *(chr(code) for code in (0xD800, 0xDBFF, 0xDC00, 0xDFFF)))

# Text of every kind, NUL and unpaired surrogates included, now and then very long.
characters = st.one_of(st.characters(), st.sampled_from(UNSTORABLE), st.integers(0xD800, 0xDFFF).map(chr))
short_text = st.lists(characters, max_size=60).map("".join)
hostile_text = st.one_of(
    short_text,
    short_text,
    short_text,
    st.sampled_from(["x" * 1_000_000, "y" * 999_990 + "\x00", "\udc80" + "z" * 1_000_000]),
)
any_int = st.one_of(
    st.integers(), st.integers(min_value=2**31 - 2, max_value=2**31 + 2), st.integers(min_value=-(2**70))
)
any_float = st.floats(allow_nan=True, allow_infinity=True)
_markers = itertools.count()


@pytest.fixture
async def config(make_config: Callable[..., DatabaseConfig]) -> DatabaseConfig:
    config = make_config()
    async with engine_for(config).begin() as connection:
        for statement in SCHEMA:
            await connection.execute(text(statement))
    return config


@pytest.fixture
async def client(config: DatabaseConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(tmp_path / "views", HostileConfig(SQLALCHEMY_DATABASE_URI=config.database_url))
    # raise_app_exceptions=False: a 500 comes back as a response, the way a server would send it.
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def _marker() -> str:
    """A distinctive prefix for one example's text: if the text reaches a log, the marker does too."""
    return f"hv{next(_markers):05d}q"


async def _post_json(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    # json.dumps escapes unpaired surrogates and writes NaN / Infinity, which the server's parser takes.
    body = json.dumps(payload).encode()
    return await client.post(f"{ACTIONS}/add_note", content=body, headers={"content-type": "application/json"})


async def _still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{ACTIONS}/add_note", json={"title": "plain"})
    assert response.status_code == 200, response.text


def _no_errors_of_ours(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _unstorable(value: str) -> bool:
    return any(character in value for character in UNSTORABLE) or any(
        0xD800 <= ord(character) <= 0xDFFF for character in value
    )


@settings(FIXED, max_examples=60)
@given(title=hostile_text, body=hostile_text, count=any_int, ratio=any_float)
async def test_an_action_stores_or_refuses_any_value_with_a_4xx_and_never_logs_it(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, title: str, body: str, count: int, ratio: float
) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    marker = _marker()
    title, body = marker + title, marker + body
    response = await _post_json(client, {"title": title, "body": body, "count": count, "ratio": ratio})
    refused = _unstorable(title) or _unstorable(body) or len(title) > 40 or count not in INT32
    if refused:
        assert response.status_code == 422, response.text[:500]
        assert response.json()["detail"] in KINDS
    else:
        assert response.status_code == 200, response.text[:500]
    assert_never_logged(caplog, marker, *([count] if len(str(count)) >= 10 else []))
    _no_errors_of_ours(caplog)
    await _still_serving(client)


@settings(FIXED, max_examples=40)
@given(price=any_float, ratio=any_float)
async def test_floats_with_nan_and_inf_are_stored_or_refused_never_a_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, price: float, ratio: float
) -> None:
    """`price` is numeric(8, 2): past 999999.99, or infinite, it cannot be stored (a 422); nan can."""
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    response = await _post_json(client, {"price": price, "ratio": ratio})
    assert response.status_code in (200, 422), response.text[:500]
    if response.status_code == 422:
        assert response.json() == {"detail": "A number is outside the range the database can store."}
        assert abs(price) >= 999999.995
    _no_errors_of_ours(caplog)
    await _still_serving(client)


@settings(FIXED, max_examples=40)
@given(note_id=any_int, count=hostile_text, title=short_text)
async def test_renders_take_any_id_and_any_query_with_a_4xx_and_never_log_them(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, note_id: int, count: str, title: str
) -> None:
    """A lookup by any id (`get_or_404`), and text compared with an integer column (`/search`)."""
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    page = await client.get(f"/notes/{note_id}")
    assert page.status_code in ((200, 404) if note_id in INT32 else (404,)), page.text[:500]  # no row has it
    if page.status_code == 404:
        assert page.json() == {"detail": "Note not found."}
    marker = _marker()
    query = {"count": marker + count[:2000], "title": title}
    search = await client.get("/search?" + "&".join(f"{name}={_wire(value)}" for name, value in query.items()))
    assert search.status_code == 422, search.text[:500]
    assert search.json()["detail"] in KINDS
    assert_never_logged(caplog, marker, *([note_id] if len(str(note_id)) >= 10 else []))
    _no_errors_of_ours(caplog)
    await _still_serving(client)


def _wire(value: str) -> str:
    """`value` percent-encoded as a client sends it: an unpaired surrogate becomes bytes that are not UTF-8."""
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


json_values = st.recursive(
    st.none() | st.booleans() | any_int | any_float | short_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(short_text, children, max_size=4),
    max_leaves=12,
)
malformed = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps({"title": value, "count": value}).encode()),
    json_values.map(lambda value: json.dumps(value).encode()[:-1]),  # cut short
)


@settings(FIXED, max_examples=40)
@given(body=malformed)
async def test_malformed_json_never_meets_the_database_and_the_app_keeps_serving(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    response = await client.post(f"{ACTIONS}/add_note", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500 or _mountaineers_decode_error(response, caplog), response.text[:500]
    assert not [line for line in logged_text(caplog) if "Rolled back" in line and "ERROR" in line]
    ours = [r for r in caplog.records if r.name.startswith(("mountaineer_db", "sqlalchemy", "asyncpg"))]
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING] == []
    await _still_serving(client)


def _mountaineers_decode_error(response: httpx.Response, caplog: pytest.LogCaptureFixture) -> bool:
    """Mountaineer 0.20's handler for a body that is not JSON fails on its own (an upstream bug; see
    tests/faults/test_bad_config.py): a 500 that never reached the database layer."""
    return response.status_code == 500 and not [
        r for r in caplog.records if r.name.startswith(("mountaineer_db", "sqlalchemy.engine", "asyncpg"))
    ]
