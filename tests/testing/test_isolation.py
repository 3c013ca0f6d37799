"""The sample app's two interfering tests pass in both orders, in a pytest run of their own.

The inner runs use the outer run's server through MOUNTAINEER_DB_TEST_URL (so they also
cover that path of `postgres_server`), each with a fresh database of its own.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountaineer_db.testing import TEST_URL_ENV, Server

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests/sample_apps/kit_app/test_kit_app.py"
FIRST = f"{MODULE}::test_first_note_is_alone"
OTHER = f"{MODULE}::test_other_note_is_alone"


@pytest.mark.parametrize("order", [(FIRST, OTHER), (OTHER, FIRST)], ids=["first-then-other", "other-then-first"])
def test_interfering_tests_pass_in_either_order(mdb_server: Server, order: tuple[str, str]) -> None:
    env = {**os.environ, TEST_URL_ENV: mdb_server.url("postgres").render_as_string(hide_password=False)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *order],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output
    ran = [line.split(" ")[0] for line in result.stdout.splitlines() if " PASSED" in line]
    assert ran == list(order), output
