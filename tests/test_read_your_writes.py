"""The read-your-writes cookie: only values we signed, unexpired, with the deploy's key, are trusted;
it goes out HttpOnly, SameSite=Lax, Secure over HTTPS."""

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer import AppController, ConfigBase, ControllerBase, RenderBase, passthrough
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, SessionDep
from mountaineer_db import read_your_writes as ryw
from mountaineer_db.read_your_writes import COOKIE_NAME, Signer, format_position, signer_for
from tests.core_app import write_stub_views

PRIMARY = "postgresql://app:pw-one@primary.internal/appdb"


def test_a_signed_position_reads_back() -> None:
    signer = Signer(b"k" * 32, lifetime=60)
    assert signer.verify(signer.sign(0x3000060)) == 0x3000060
    assert "k" * 8 not in repr(signer)


@pytest.mark.parametrize(
    "forge",
    [
        lambda value: value.replace(value.split(".")[0], f"{int(value.split('.')[0], 16) + 1:x}", 1),
        lambda value: value[:-2] + ("AA" if not value.endswith("AA") else "BB"),
        lambda value: value.rsplit(".", 1)[0],
        lambda value: "",
        lambda value: "not.a.cookie",
        lambda value: Signer(b"other" * 8, lifetime=60).sign(0x3000060),
    ],
    ids=["position_raised", "signature_changed", "unsigned", "empty", "garbage", "other_key"],
)
def test_a_value_we_did_not_sign_reads_as_no_position(forge: object) -> None:
    signer = Signer(b"k" * 32, lifetime=60)
    assert signer.verify(forge(signer.sign(0x3000060))) == 0  # type: ignore[operator]


def test_an_expired_value_reads_as_no_position() -> None:
    assert Signer(b"k" * 32, lifetime=-1).verify(Signer(b"k" * 32, lifetime=-1).sign(5)) == 0


def test_every_process_of_a_deploy_derives_the_same_key_from_the_password() -> None:
    first = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY))
    second = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY))
    other_password = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY.replace("pw-one", "pw-two")))
    value = first.sign(42)
    assert second.verify(value) == 42
    assert other_password.verify(value) == 0
    assert first.lifetime == 65.0, "DATABASE_REPLICA_MAX_LAG + 60 s"


def test_the_secret_setting_signs_instead_of_the_password() -> None:
    with_secret = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_SECRET="k1"))
    other_url = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://x@y/z", DATABASE_READ_YOUR_WRITES_SECRET="k1")
    assert signer_for(other_url).verify(with_secret.sign(7)) == 7
    assert signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)).verify(with_secret.sign(7)) == 0


def test_without_password_or_secret_a_process_key_is_used_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ryw, "_process_key", None)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://trusted@db.internal/appdb")
    first, second = signer_for(config), signer_for(config)
    assert second.verify(first.sign(9)) == 9
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "DATABASE_READ_YOUR_WRITES_SECRET is not set and the database URL has no password: the read-your-writes "
        "cookie is signed with a key of this process only, which other processes reject. Set "
        "DATABASE_READ_YOUR_WRITES_SECRET to the same random value in every process."
    ]


def test_positions_are_shown_as_postgresql_writes_them() -> None:
    assert format_position(0x3000060) == "0/3000060"
    assert format_position((0x1A << 32) + 0xB0) == "1A/B0"


# --- The cookie on the wire: a real app, a real commit ------------------------------------------


class CookieAppConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app passes view_root."""


class CookieRender(RenderBase):
    pass


class CookieController(ControllerBase):
    url = "/"
    view_path = "/app/cookie/page.tsx"

    async def render(self) -> CookieRender:
        return CookieRender()

    @passthrough
    async def save(self, session: SessionDep) -> None:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        await session.commit()


def _cookie_attributes(response: httpx.Response) -> dict[str, str]:
    """The attributes of the one read-your-writes Set-Cookie header: lower-case names, `Secure` as ''."""
    [header] = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{COOKIE_NAME}=")]
    attributes = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_the_cookie_is_httponly_samesite_lax_and_secure_over_https(
    pg_server: Any, test_database: str, tmp_path: Path, scheme: str
) -> None:
    """As docs/replicas.md promises: HttpOnly, SameSite=Lax, Secure over HTTPS (only), expiring after MAX_LAG + 60 s."""
    config = CookieAppConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(test_database),
        # Never connected to here: the action reads and writes on the primary.
        DATABASE_REPLICA_URLS=[pg_server.url("postgres")],
        DATABASE_REPLICA_MAX_LAG=7,
    )
    write_stub_views(tmp_path, "cookie-views", "cookie")
    app = AppController(view_root=tmp_path, config=config)
    app.register(CookieController())
    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://testserver") as http:
        response = await http.post("/internal/api/cookie_controller/save")
    assert response.status_code == 200, response.text
    attributes = _cookie_attributes(response)
    expected = {"httponly": "", "samesite": "lax", "path": "/", "max-age": "67"}
    if scheme == "https":
        expected["secure"] = ""
    assert attributes == expected
