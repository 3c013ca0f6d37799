#!/usr/bin/env bash
# What the test suite needs for the example app (called by scripts/test.sh): its views'
# npm packages, a frontend build (generates the .mountaineer/ types), and tsc over the views.
# The app itself is installed into the virtualenvs by scripts/test.sh. The first build
# downloads Mountaineer's Vite toolchain from the npm registry into ~/.cache/mountaineer.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v npm >/dev/null 2>&1; then
    echo "==> example app views: npm install, then build (generates .mountaineer/ types) and tsc"
    (cd example_app/todo_app/views && npm install --no-audit --no-fund --loglevel=error)
    (cd example_app && ../.venv/bin/todo-app build >/dev/null)
    (cd example_app/todo_app/views && npx --no-install tsc --noEmit)
else
    echo "!! npm not found: the example app's E2E test cannot build its frontend" >&2
fi
