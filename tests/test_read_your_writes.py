"""The read-your-writes cookie: only values we signed, unexpired, with the deploy's key, are trusted;
it goes out HttpOnly, SameSite=Lax, Secure over HTTPS."""

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer import AppController, ConfigBase, ControllerBase, RenderBase, passthrough
from mountaineer.config import unregister_config
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseConfigError, SessionDep
from mountaineer_db.replicas import read_your_writes as ryw
from mountaineer_db.replicas.read_your_writes import COOKIE_NAME, Signer, format_position, signer_for
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


KEY = "k1-" + "x" * 29
OLD_KEY = "k0-" + "y" * 29


def test_every_process_of_a_deploy_signs_with_the_configured_keys() -> None:
    first = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=KEY))
    other_url = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://x@y/z", DATABASE_READ_YOUR_WRITES_KEYS=KEY)
    other_key = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=OLD_KEY)
    value = first.sign(42)
    assert signer_for(other_url).verify(value) == 42
    assert signer_for(other_key).verify(value) == 0
    assert first.lifetime == 65.0, "DATABASE_REPLICA_MAX_LAG + 60 s"
    assert KEY not in repr(first)


def test_the_key_is_never_derived_from_the_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key derived from the URL and its password let any client that writes test password guesses offline
    against its own cookie. Now the password plays no part: a cookie made with that derivation is refused,
    and two configs differing only in their password sign alike."""
    monkeypatch.setattr(ryw, "_process_key", None)
    one = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)
    derived_from_password = hmac.new(
        b"mountaineer_db read-your-writes",
        one.database_url.render_as_string(hide_password=False).encode(),
        hashlib.sha256,
    ).digest()
    forged = Signer(derived_from_password, lifetime=60).sign(0x3000060)
    assert signer_for(one).verify(forged) == 0
    two = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY.replace("pw-one", "pw-two"))
    assert signer_for(two).verify(signer_for(one).sign(7)) == 7
    keyed = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=KEY)
    assert signer_for(keyed).verify(Signer(derived_from_password, lifetime=60).sign(7)) == 0


def test_keys_rotate_the_first_signs_and_any_verifies() -> None:
    before = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=OLD_KEY))
    during = signer_for(
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=f" {KEY} , {OLD_KEY},")
    )
    after = signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=KEY))
    assert during.verify(before.sign(5)) == 5, "cookies signed before the rotation stay valid"
    assert after.verify(during.sign(6)) == 6, "new cookies are signed with the new key"
    assert before.verify(during.sign(6)) == 0
    assert after.verify(before.sign(5)) == 0, "once the old key is dropped, its cookies are not trusted"


def test_the_keys_come_from_the_environment_under_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_READ_YOUR_WRITES_KEYS", f"{KEY},{OLD_KEY}")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)
    assert signer_for(config).verify(Signer(ryw._derived(OLD_KEY), lifetime=60).sign(3)) == 3
    monkeypatch.delenv("DATABASE_READ_YOUR_WRITES_KEYS")
    monkeypatch.setenv("DATABASE_READ_YOUR_WRITES_SECRET", KEY)  # the name of earlier versions
    assert signer_for(DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)).verify(signer_for(config).sign(4)) == 4


class ProductionConfig(DatabaseConfig, ConfigBase):
    ENVIRONMENT: str = "production"


def test_production_with_replicas_refuses_to_start_without_keys() -> None:
    replicas = {"SQLALCHEMY_DATABASE_URI": PRIMARY, "DATABASE_REPLICA_URLS": "postgresql://replica.internal"}
    with pytest.raises(DatabaseConfigError) as caught:
        ProductionConfig(**replicas)
    assert (
        "DATABASE_REPLICA_URLS is set and ENVIRONMENT is production, but DATABASE_READ_YOUR_WRITES_KEYS is not: the "
        "read-your-writes cookie needs a key that every process of the deploy shares."
    ) in str(caught.value)
    assert ProductionConfig(**replicas, DATABASE_READ_YOUR_WRITES_KEYS=KEY).DATABASE_REPLICA_URLS
    unregister_config()  # ConfigBase registers each instance it builds
    assert ProductionConfig(SQLALCHEMY_DATABASE_URI=PRIMARY), "no replicas: no cookie, no key needed"
    assert DatabaseConfig(**replicas), "development: a key per process, with a warning"


def test_production_is_also_read_from_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "Production")
    with pytest.raises(DatabaseConfigError, match="DATABASE_READ_YOUR_WRITES_KEYS is not"):
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_REPLICA_URLS="postgresql://replica.internal")


def test_a_short_key_is_refused_without_showing_it() -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, DATABASE_READ_YOUR_WRITES_KEYS=f"{KEY},short-k3y")
    assert "DATABASE_READ_YOUR_WRITES_KEYS holds a key shorter than 16 characters" in str(caught.value)
    assert "short-k3y" not in str(caught.value) and KEY not in str(caught.value)


def test_without_keys_a_process_key_is_used_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ryw, "_process_key", None)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://trusted@db.internal/appdb")
    first, second = signer_for(config), signer_for(config)
    assert second.verify(first.sign(9)) == 9
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "DATABASE_READ_YOUR_WRITES_KEYS is not set: the read-your-writes cookie is signed with a key of this process "
        "only, which other processes reject (so a client may not read its own writes there). Set "
        "DATABASE_READ_YOUR_WRITES_KEYS to the same random value in every process; production requires it."
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
