"""The benchmark scripts still run: each one, with tiny counts, prints its figures and ratios.

No timing is asserted (the machine may be busy); only that every comparison completes and
reports what the README quotes. Each script starts its own PostgreSQL and PgBouncer.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_pgbouncer

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.pgbouncer, pytest.mark.slow]


def run(script: str, *args: str, timeout: float = 120) -> str:
    require_pgbouncer()
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "machine:" in result.stdout
    return result.stdout


def ratios(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"ratio ours/raw = ([0-9.]+)×", output)]


def test_bench_sessions_prints_every_comparison_with_its_ratio() -> None:
    output = run("bench_sessions.py", "--rounds", "1", "--requests", "8")
    labels = (
        "[1] default config",
        "[1u] default config",
        "[2] FIXED_PROCESS direct",
        "[3] FIXED_PROCESS via PgBouncer",
    )
    for label in labels:
        assert output.count(label) == 2, output  # concurrency 1 and 16
    found = ratios(output)
    assert len(found) == 8 and all(r > 0 for r in found), output
    assert "client CPU ratio" in output
    assert output.count("ratio to off = ") == 3, "[7]: the checks off, on, and on with an N+1 threshold"
    # Every peer appears once per comparison, with a ratio to ours or its error rate.
    for peer in ("sqlmodel-docs", "mountaineer.database", "advanced-alchemy"):
        lines = [line for line in output.splitlines() if line.strip().startswith(f"peer  {peer} ")]
        assert len(lines) == 8 and all("ours/peer = " in line or "errors " in line for line in lines), output


def test_bench_breakdown_prints_each_layer() -> None:
    output = run("bench_breakdown.py", "--rounds", "1", "--requests", "8")
    assert "raw asyncpg pool" in output
    assert "get_db_session (as FastAPI calls it)" in output
    assert "plain engine (the peer)" in output
    assert len(re.findall(r"µs/req [0-9.]+×", output)) == 7 + 3, output  # layers, then fixed costs
    assert "[fixed cost, no statement, no I/O]" in output


def test_bench_roundtrips_counts_statements_and_hold_times() -> None:
    output = run("bench_roundtrips.py", "--requests", "4")
    for label in ("[5a]", "[5c]", "[5d]", "[5e]", "[5h]", "[5i]"):
        assert label in output, output
    # The default config sends no SSL request and opens one connection per request.
    first = output.split("[5a]", 1)[1].split("\n[5b]", 1)[0]
    assert "1.00 connections opened, 0.00 SSL requests" in first, first
    assert "transaction ended after the response was sent" in output


def test_profile_session_prints_a_profile() -> None:
    output = run("profile_session.py", "--setup", "fixed-direct", "--requests", "20", "--limit", "5")
    assert "µs/request under the profiler" in output
    assert "function calls" in output


def test_profile_http_prints_cpu_per_request_side_by_side() -> None:
    output = run("profile_http.py", "--setup", "fixed-bouncer", "--rounds", "1", "--requests", "10")
    assert output.count("[http-cpu]") == 2, output
    for variant in ("rawpool-render", "ours-render", "rawpool-action", "ours-action"):
        assert re.search(rf"{variant} +\d+ µs/req", output), output


def test_count_calls_prints_both_counts_and_the_difference() -> None:
    output = run("count_calls.py", "--requests", "20", "--limit", "5")
    assert re.search(r"ours +\d+\.\d Python calls per request", output), output
    assert re.search(r"sqlmodel-docs +\d+\.\d Python calls per request", output), output
    assert "called more often per request by ours" in output


def test_count_instructions_prints_each_party_and_the_ratio() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    output = run(
        "count_instructions.py", "--requests", "10", "--warmup", "10", "--concurrency", "1", "--peers", "sqlmodel-docs",
        timeout=600,
    )  # fmt: skip
    ours = re.search(r"ours +([0-9.]+)k instructions/request", output)
    peer = re.search(r"sqlmodel-docs +([0-9.]+)k instructions/request +ours/peer = ([0-9.]+)×", output)
    assert ours and peer, output
    # A request is hundreds of thousands of instructions, not the toggles' noise.
    assert float(ours.group(1)) > 100 and float(peer.group(1)) > 100, output


def test_bench_http_serves_both_apps_and_prints_ratios() -> None:
    output = run("bench_http.py", "--quick", "--rounds", "1", "--duration", "0.5", "--concurrency", "4")
    assert output.count("ratio ours/raw: throughput") == 2, output
    assert len(re.findall(r"ours \(\w+ through get_db_session\) +\d+ req/s +p99 +[0-9.]+ ms +errors 0", output)) == 2, (
        output
    )
