#!/usr/bin/env bash
# What the test suite needs for the example app (called by scripts/test.sh when present):
# the app installed into .venv (editable), and its views type-checked with tsc.
# The E2E test builds the frontend itself (the first build downloads Mountaineer's Vite
# toolchain from the npm registry into ~/.cache/mountaineer).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> installing the example app (editable)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ./example_app 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'ignored: it is neither' || true

if command -v npm >/dev/null 2>&1; then
    echo "==> example app views: npm install, then build (generates .mountaineer/ types) and tsc"
    (cd example_app/todo_app/views && npm install --no-audit --no-fund --loglevel=error)
    (cd example_app && ../.venv/bin/todo-app build >/dev/null)
    (cd example_app/todo_app/views && npx --no-install tsc --noEmit)
else
    echo "!! npm not found: the example app's E2E test cannot build its frontend" >&2
fi
