"""End to end: the built example app in a real headless Chromium, on a real PostgreSQL.

The frontend is built (`todo-app build`) in a copy of the app made for this run, the copy is
served by uvicorn in a subprocess with ENVIRONMENT=production, pointed at a throwaway database
made by the app's migrations, and
driven by Playwright through Debian's `chromium` (no browser download). A screenshot is
saved under test-artifacts/. Without chromium the test is skipped loudly (a failure in CI):
install it with `apt-get install -y chromium`, or point CHROMIUM_PATH at another binary.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mountaineer_db.servers.cluster import free_port
from mountaineer_db.testing import Server, apply_migrations, create_schema, throwaway_database
from tests.example_app._require import require_example_app

require_example_app()

import todo_app  # noqa: E402 - after the installed check
from todo_app.config import AppConfig  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


def _chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = f"chromium not found at {path}: install it (apt-get install -y chromium) or set CHROMIUM_PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _decoration(locator: Any) -> str:
    """The computed `text-decoration-line` of an element (what the reader sees)."""
    value: str = locator.evaluate("element => getComputedStyle(element).textDecorationLine")
    return value


def _todo_app_command() -> list[str]:
    return [sys.executable, "-c", "from todo_app.cli import cli; cli()"]


@pytest.fixture(scope="module")
def server_env(mdb_server: Server) -> Iterator[dict[str, str]]:
    """Environment for the app processes: production mode, a fresh migrated database."""
    with throwaway_database(mdb_server) as database:
        create_schema(database.config(), apply_migrations(AppConfig))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("POSTGRES_", "DATABASE_"))}
        env.update(
            ENVIRONMENT="production",
            DATABASE_EMBEDDED="false",
            SQLALCHEMY_DATABASE_URI=database.url.render_as_string(hide_password=False),
        )
        yield env


# Where the app's code and its views are taken from (both must be the copy's).
_WHERE = (
    "import todo_app; from mountaineer.paths import resolve_package_path; "
    "print(todo_app.__file__); print(resolve_package_path('todo_app').resolve())"
)


def _copy_of_the_app(destination: Path) -> Path:
    """A copy of the `todo_app` package under `destination`, to build and serve apart.

    `todo-app build` writes its output into the package's views/ folder, and the server reads
    it from there; two test runs from one checkout (the newest and the lowest pass at once, say)
    would otherwise rebuild it under each other's server. Mountaineer finds that folder through
    the installed distribution (`mountaineer.paths.resolve_package_path`, which follows the
    editable install to the checkout), so the copy comes with a minimal `.dist-info` of its own,
    found first on the path (the check in `app_url` asserts both resolve to the copy). It shares
    the checkout's node_modules (read only) through a link.
    """
    source = Path(todo_app.__file__).resolve().parent
    generated = shutil.ignore_patterns("node_modules", "_server", "_static", "__pycache__")
    shutil.copytree(source, destination / "todo_app", ignore=generated)
    node_modules = source / "views" / "node_modules"
    if node_modules.is_dir():
        (destination / "todo_app" / "views" / "node_modules").symlink_to(node_modules, target_is_directory=True)
    dist_info = destination / "todo_app-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: todo-app\nVersion: 0.1.0\n")
    (dist_info / "RECORD").write_text("todo_app/__init__.py,,\n")
    return destination


@pytest.fixture(scope="module")
def app_url(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build the frontend of a copy of the app, then serve that copy with uvicorn on a free port."""
    ARTIFACTS.mkdir(exist_ok=True)
    copy = _copy_of_the_app(tmp_path_factory.mktemp("example_app"))
    # The copy comes first on the path, before the installed (editable) todo_app; run from the
    # copy's folder, which has no .env: example_app/.env (the embedded dev database) is not read.
    env = {**server_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), server_env.get("PYTHONPATH")]))}
    where = subprocess.run(
        [sys.executable, "-c", _WHERE], cwd=copy, env=env, capture_output=True, text=True, check=False
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(copy) for line in where.stdout.split()), f"not the copy: {where.stdout}"
    build = subprocess.run(
        [*_todo_app_command(), "build"], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, f"todo-app build failed:\n{build.stdout}\n{build.stderr}"

    port = free_port()
    log_path = ARTIFACTS / f"e2e-server-{os.getpid()}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "todo_app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=copy,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"uvicorn exited; see {log_path}:\n{log_path.read_text()[-3000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"uvicorn did not listen within 60 s; see {log_path}"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


@pytest.mark.parametrize("todo_id", ["999999", "abc", "1.5"])
def test_unknown_todo_gets_the_404_page(app_url: str, todo_id: str) -> None:
    """An id that names no row, and one that is not an id at all: the 404 page, not JSON."""
    response = httpx.get(f"{app_url}/todos/{todo_id}", timeout=30)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h2>Not found</h2>" in response.text
    assert "There is no such todo" in response.text


def test_a_malformed_action_payload_is_still_a_422(app_url: str) -> None:
    response = httpx.post(f"{app_url}/internal/api/home_controller/toggle_todo", json={"id": "abc"}, timeout=30)
    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == ["body", "id"]


def test_list_page_is_server_rendered(app_url: str) -> None:
    response = httpx.get(app_url + "/", timeout=30)
    assert response.status_code == 200
    assert "<title>Todos (0 open)</title>" in response.text
    assert "Nothing to do yet" in response.text  # rendered on the server, before any script runs


def test_todo_lifecycle_in_a_real_browser(app_url: str) -> None:
    """Add (seen without reload), reload (still there), validate, toggle, rename, delete."""
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            page.goto(app_url + "/")
            expect(page.get_by_text("Nothing to do yet")).to_be_visible()

            # Add: the list updates in place (a marker on window survives only if there is no reload).
            page.evaluate("window.__noReload = true")
            page.get_by_label("New todo").fill("Buy milk")
            page.get_by_role("button", name="Add").click()
            item = page.locator("li", has_text="Buy milk")
            expect(item).to_be_visible()
            expect(page.get_by_label("New todo")).to_have_value("")
            expect(page).to_have_title("Todos (1 open)")  # the tab title follows without a reload
            assert page.evaluate("window.__noReload") is True, "adding a todo reloaded the page"

            # Validation: a clear error in the page, nothing written.
            page.get_by_label("New todo").fill("x" * 2000)
            page.get_by_role("button", name="Add").click()
            expect(page.get_by_role("alert")).to_have_text("That description has 2,000 characters; the limit is 500.")
            page.screenshot(path=str(ARTIFACTS / "e2e-validation-error.png"))
            page.get_by_label("New todo").fill("   ")
            page.get_by_role("button", name="Add").click()
            expect(page.get_by_role("alert")).to_have_text("Write something first: the description is empty.")
            expect(page.locator("li")).to_have_count(1)
            # The same open todo twice: the 409 of map_integrity_errors, shown in the page.
            page.get_by_label("New todo").fill("Buy milk")
            page.get_by_role("button", name="Add").click()
            expect(page.get_by_role("alert")).to_have_text("An open todo with this description already exists.")
            expect(page.locator("li")).to_have_count(1)

            page.reload()
            expect(item).to_be_visible()
            expect(page.get_by_role("alert")).to_have_count(0)

            # Toggle done, and it stays done after a reload.
            item.get_by_role("checkbox").click()  # controlled: checked once the server answers
            expect(item).to_have_class("done")
            expect(page).to_have_title("Todos (0 open)")
            page.reload()
            expect(item.get_by_role("checkbox")).to_be_checked()
            page.screenshot(path=str(ARTIFACTS / "e2e-todo-list.png"), full_page=True)

            # The detail page: rename.
            item.get_by_role("link", name="Buy milk").click()
            page.wait_for_url("**/todos/*")
            expect(page).to_have_title(re.compile(r"^Todo #\d+$"))
            heading = page.get_by_role("heading", name="Buy milk")
            assert _decoration(heading) == "line-through", "a done todo's heading is not struck through"
            page.get_by_label("Description").fill("Buy oat milk")
            page.get_by_role("button", name="Rename").click()
            heading = page.get_by_role("heading", name="Buy oat milk")
            expect(heading).to_be_visible()
            page.get_by_role("button", name="Mark open").click()
            expect(page.get_by_role("button", name="Mark done")).to_be_visible()
            assert _decoration(heading) == "none"
            page.screenshot(path=str(ARTIFACTS / "e2e-todo-detail.png"), full_page=True)
            page.get_by_role("link", name="All todos").click()
            renamed = page.locator("li", has_text="Buy oat milk")
            expect(renamed).to_be_visible()

            # Delete, and it stays deleted after a reload.
            renamed.get_by_role("button", name="Delete: Buy oat milk").click()
            expect(page.locator("li")).to_have_count(0)
            expect(page.get_by_text("Nothing to do yet")).to_be_visible()
            page.reload()
            expect(page.get_by_text("Nothing to do yet")).to_be_visible()
            assert errors == [], f"JavaScript errors in the page: {errors}"
        finally:
            browser.close()
