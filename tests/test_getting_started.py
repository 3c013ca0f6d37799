"""docs/getting-started.md, followed as a newcomer would: its files make an app that installs,
makes its table, passes its tests, and serves a page where a todo can be added in a browser.

The files come from the page's code blocks and the commands are the page's own (the
`mountaineer-db`, `pytest` and `mountaineer-dev` of this virtualenv), run in a new folder with
no database settings in the environment: the app's `.env` asks for the development database,
which the commands start as the page says. Only installing differs: the app goes into a folder
of the test's own, its dependencies being this suite's.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mountaineer_db.servers.cluster import free_port
from tests.docs_code import commands_in, files_in, section, write_files

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "getting-started.md").read_text()
BIN = Path(sys.executable).parent
TIMEOUT_MS = 20_000

# What a newcomer runs, in this order (the page's step 3).
STEPS = [
    'pip install -e ".[test]"',
    "(cd myapp/views && npm install)",
    "mountaineer-db --config myapp.config:AppConfig createdb --create-tables",
    "pytest",
    "mountaineer-dev",
]


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    """The page's files in a new folder the unprivileged PostgreSQL user can reach."""
    root = Path(tempfile.mkdtemp(prefix="mdb-getting-started-"))
    os.chmod(root, 0o755)
    folder = root / "myapp-project"
    write_files(files_in(PAGE), folder)
    yield folder
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def env(project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`pip install -e ".[test]"` as the page says, into a folder of this test's own."""
    site = tmp_path_factory.mktemp("site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), "."],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert "deprecat" not in (install.stdout + install.stderr).lower(), install.stderr[-3000:]
    scrubbed = ("POSTGRES_", "DATABASE_", "SQLALCHEMY_", "MIGRATIONS_", "MOUNTAINEER_DB_", "PYTEST_", "VIRTUAL_ENV")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(scrubbed)}
    environment["PYTHONPATH"] = str(site)
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def test_the_page_lists_every_file_and_step() -> None:
    assert set(files_in(PAGE)) == {
        "pyproject.toml",
        ".env",
        ".gitignore",
        "myapp/__init__.py",
        "myapp/config.py",
        "myapp/models.py",
        "myapp/controllers/__init__.py",
        "myapp/controllers/home.py",
        "myapp/app.py",
        "myapp/views/package.json",
        "myapp/views/app/home/page.tsx",
        "tests/conftest.py",
        "tests/test_home.py",
    }
    # server.json in .mountaineer_db/ holds the development database's password
    assert ".mountaineer_db/" in files_in(PAGE)[".gitignore"].splitlines()
    commands = commands_in(PAGE)
    assert commands[-len(STEPS) :] == STEPS
    assert 'pip install -e "../mountaineer-db[embedded]"' in commands
    # Issue 25: what to do when another app has port 5006, and no placeholder left to fill in.
    assert "`Address already in use`" in PAGE and "`mountaineer-dev --port 5007`" in PAGE
    assert "<repository URL>" not in PAGE and "<repository URL>" not in (ROOT / "README.md").read_text()


def _run(command: list[str], project: Path, env: dict[str, str], cwd: Path | None = None) -> str:
    result = subprocess.run(
        command, cwd=cwd or project, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _embedded_state(project: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((project / ".mountaineer_db" / "server.json").read_text())
    return state


@pytest.fixture(scope="module")
def prepared(project: Path, env: dict[str, str]) -> Path:
    """npm install, then the table in the development database, as the page does it."""
    _run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], project, env, cwd=project / "myapp" / "views"
    )
    output = _run(
        [str(BIN / "mountaineer-db"), "--config", "myapp.config:AppConfig", "createdb", "--create-tables"], project, env
    )
    lines = output.splitlines()
    assert lines[0].startswith('Created database "myapp" on 127.0.0.1:'), output  # the first run creates it
    assert lines[1] == "Created the tables of the models.", output
    assert _embedded_state(project)["owner_pid"] == 0, "the command left the development database running"
    return project


def test_the_apps_own_tests_pass(prepared: Path, env: dict[str, str]) -> None:
    output = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"], prepared, env)
    assert "2 passed" in output, output[-2000:]
    assert _embedded_state(prepared)["owner_pid"] == 0, "the tests started the development database"


def _chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = f"chromium not found at {path}: apt-get install -y chromium, or set CHROMIUM_PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _stop(server: "subprocess.Popen[bytes]") -> None:
    """Ctrl-C, as the page says: SIGINT to the dev server's process group."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_the_page_serves_and_a_todo_added_in_the_browser_is_listed(
    prepared: Path, env: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    port = free_port()
    log_path = tmp_path / "mountaineer-dev.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(BIN / "mountaineer-dev"), "--port", str(port)],
            cwd=prepared,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"mountaineer-dev exited:\n{log_path.read_text()[-3000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    if httpx.get(url, timeout=30).status_code == 200:
                        break
            except (OSError, httpx.HTTPError):
                pass
            assert time.monotonic() < deadline, f"no page within 180 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        assert _embedded_state(prepared)["owner_pid"] not in (0, None), "the app did not start the database"

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--headless", "--no-sandbox"])
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                expect.set_options(timeout=TIMEOUT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(url, wait_until="networkidle")  # the dev server loads the page's modules one by one
                page.get_by_label("New todo").fill("Buy milk")
                page.get_by_role("button", name="Add").click()
                expect(page.locator("li", has_text="Buy milk")).to_be_visible()
                page.reload()
                expect(page.locator("li", has_text="Buy milk")).to_be_visible()
                assert errors == [], f"JavaScript errors in the page: {errors}"
            finally:
                browser.close()
    finally:
        _stop(server)
    assert server.returncode is not None
    state = _embedded_state(prepared)
    assert state["owner_pid"] == 0, f"Ctrl-C left the development database running: {state}"


def test_the_next_step_moves_this_app_to_migrations(prepared: Path, env: dict[str, str]) -> None:
    """docs/migrations.md "From createdb --create-tables to migrations", run on this very app
    (issue 25: `createdb` right after `dropdb` used to print `Already exists`, the development
    database having re-created it)."""
    block = section((ROOT / "docs" / "migrations.md").read_text(), "### From `createdb --create-tables` to migrations")
    commands = commands_in(block)
    assert commands[0] == "export MOUNTAINEER_DB_CONFIG=myapp.config:AppConfig"
    assert commands[1:3] == ["mountaineer-db dropdb --yes", "mountaineer-db createdb"]
    moving = {**env, "MOUNTAINEER_DB_CONFIG": commands[0].split("=", 1)[1]}
    outputs = {}
    for command in commands[1:]:
        program, *arguments = command.split(" ", 1)
        argv = [str(BIN / program), *shlex.split(arguments[0] if arguments else "")]
        outputs[command] = _run(argv, prepared, moving)
    assert outputs["mountaineer-db dropdb --yes"].startswith('Dropped database "myapp" on 127.0.0.1:')
    assert outputs["mountaineer-db createdb"].startswith('Created database "myapp" on 127.0.0.1:'), outputs
    generated = outputs['mountaineer-db migrate generate -m "create todo"']
    assert "Review it, then run: mountaineer-db migrate apply" in generated
    assert (prepared / "myapp" / "migrations" / "versions").is_dir()
    _run([str(BIN / "mountaineer-db"), "migrate", "check"], prepared, moving)  # exits 1 on any difference
    assert _embedded_state(prepared)["owner_pid"] == 0, "a command left the development database running"
