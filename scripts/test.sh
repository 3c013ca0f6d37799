#!/usr/bin/env bash
# The whole test suite, from a fresh clone, in one command:
#
#   bash scripts/test.sh [pytest args]
#
# Installs what the suite needs when it is missing (from Debian's packages: PgBouncer, Chromium,
# valgrind, and etcd, Patroni and HAProxy for the high-availability tests; PgBouncer 1.24 built from
# Debian 13's source package, cached; a virtualenv with the package, its dev extra and the
# example app), runs ruff, mypy --strict and lint-imports, then
# pytest twice: on the newest releases of our dependencies with the newest
# Python found (.venv), and on the lowest versions pyproject.toml declares with the lowest Python
# it supports, 3.11 (.venv-lowest, pinned by constraints/lowest.txt).
# MOUNTAINEER_DB_VERSIONS=newest (or lowest) runs only one of the two; PYTHON_NEWEST and
# PYTHON_LOWEST choose the interpreters. Each pass runs in MOUNTAINEER_DB_TEST_WORKERS (default
# 2) pytest-xdist workers, a test module per worker at a time (--dist loadfile: a module's
# fixtures, such as an app built and installed once, stay in one process); 0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# The high-availability tests (tests/test_patroni.py, marker `ha`): etcd, Patroni, HAProxy.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# bench/count_instructions.py (its smoke test): valgrind's callgrind counts client instructions.
command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "!! missing ${missing[*]}: install them (apt-get install ${missing[*]}); their tests will skip" >&2
  fi
fi

# PgBouncer 1.24 (protocol-level prepared statements; Debian 12 ships 1.18): built once from
# Debian 13's source package into ~/.cache/mountaineer-db/pgbouncer-1.24 and reused from there.
# The PgBouncer tests run on both versions; if the build is impossible here, the 1.24 cases skip
# with the reason instead of failing.
echo "==> PgBouncer 1.24 for the tests on both PgBouncer versions"
if pgbouncer_124=$(bash scripts/build_pgbouncer.sh); then
  export MOUNTAINEER_DB_PGBOUNCERS="$pgbouncer_124${MOUNTAINEER_DB_PGBOUNCERS:+:$MOUNTAINEER_DB_PGBOUNCERS}"
  echo "    $("$pgbouncer_124" --version | head -n 1) at $pgbouncer_124"
else
  echo "!! could not build PgBouncer 1.24 (see above); its tests will skip" >&2
  export MOUNTAINEER_DB_PGBOUNCER_BUILD_FAILED="scripts/build_pgbouncer.sh failed, see the output before the tests"
fi

versions=${MOUNTAINEER_DB_VERSIONS:-both}

# find_python 3.13 3.12 ...: the first of these CPython versions that runs here, on PATH or
# installed by pyenv (whose shims refuse versions that are not selected); else python3.
find_python() {
  local version candidate
  for version in "$@"; do
    for candidate in "python$version" $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V | tail -n 1); do
      if "$candidate" -c 'import sys' >/dev/null 2>&1; then
        echo "$candidate"
        return
      fi
    done
  done
  echo python3
}
PYTHON_NEWEST=${PYTHON_NEWEST:-$(find_python 3.14 3.13 3.12 3.11)}
PYTHON_LOWEST=${PYTHON_LOWEST:-$(find_python 3.11)}

quiet_pip() {
  "$@" 2>&1 | grep -v -e '^WARNING: Location' -e 'ignored: it is neither' || true
}

# make_venv DIR PYTHON [pip constraint args...]: the package with its dev extra, and the example app.
# A DIR made by another Python (another tool's .venv, an older run with another PYTHON_NEWEST)
# is made again: the pass must run on the Python it announces.
make_venv() {
  local venv=$1 python=$2 wanted have
  shift 2
  wanted=$("$python" -c 'import sys; print(sys.version.split()[0])')
  have=$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)
  if [ -n "$have" ] && [ "$have" != "$wanted" ]; then
    echo "==> $venv has Python $have, this pass wants $wanted ($python): making it again"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
  fi
  echo "==> installing Python packages into $venv $*"
  quiet_pip "$venv/bin/python" -m pip install -q --upgrade pip
  quiet_pip "$venv/bin/python" -m pip install -q "$@" -e '.[dev]' -e ./example_app
  "$venv/bin/python" -m pip check >/dev/null || { "$venv/bin/python" -m pip check; exit 1; }
}

make_venv .venv "$PYTHON_NEWEST"
if [ "$versions" != newest ]; then
  make_venv .venv-lowest "$PYTHON_LOWEST" -c constraints/lowest.txt
  # The floors must be what is installed, not merely allowed.
  .venv-lowest/bin/python scripts/check_lowest.py constraints/lowest.txt
fi

if [ -f scripts/prepare_example.sh ]; then
  bash scripts/prepare_example.sh
fi

echo "==> linters"
.venv/bin/ruff check mountaineer_db tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports  # the layers and import rules in pyproject.toml (docs/architecture.md)

workers=${MOUNTAINEER_DB_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 0 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi

status=0
if [ "$versions" != lowest ]; then
  echo "==> pytest (newest releases, $(.venv/bin/python --version), ${workers} workers)"
  .venv/bin/python -m pytest "${parallel[@]}" "$@" || status=$?
fi
if [ "$versions" != newest ]; then
  echo "==> pytest (lowest declared versions: constraints/lowest.txt, $(.venv-lowest/bin/python --version), ${workers} workers)"
  .venv-lowest/bin/python -m pytest "${parallel[@]}" "$@" || status=$?
fi
exit $status
