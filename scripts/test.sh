#!/usr/bin/env bash
# The whole test suite, from a fresh clone, in one command: bash scripts/test.sh [pytest args]
# Installs what the suite needs when it is missing (PgBouncer and Chromium from Debian's
# packages, a virtualenv with the package and its dev extra), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

missing=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "!! missing ${missing[*]}: install them (apt-get install ${missing[*]}); their tests will skip" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing Python packages"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -e '^WARNING: Location' -e 'ignored: it is neither' || true

if [ -f scripts/prepare_example.sh ]; then
  bash scripts/prepare_example.sh
fi

echo "==> linters"
.venv/bin/ruff check mountaineer_db tests bench
.venv/bin/mypy

echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
