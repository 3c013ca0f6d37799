#!/usr/bin/env bash
# Run the example todo app from a fresh clone, in one command:
#
#   bash scripts/run_example.sh            # then open the printed http://127.0.0.1:5006/
#
# Creates .venv-example (unless a virtualenv is active), installs mountaineer-db and the example
# app (editable), installs the views' npm packages, builds the frontend, then starts the
# development server on the embedded PostgreSQL (example_app/.mountaineer_db/; migrations
# applied on start). Needs Python >= 3.11 and Node.js >= 20 with npm; the first build
# downloads Mountaineer's Vite toolchain from the npm registry into ~/.cache/mountaineer.
# PORT=8000 / HOST=0.0.0.0 change the address. Its virtualenv is its own: scripts/test.sh builds
# .venv (newest Python) and .venv-lowest (3.11), and neither is this one by accident.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step() { printf '\n==> %s\n' "$*"; }

python="${PYTHON:-python3}"
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    venv="$VIRTUAL_ENV"
else
    venv="$root/.venv-example"
    if [[ ! -x "$venv/bin/python" ]]; then
        step "Creating a virtual environment in .venv-example"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
        "$python" -m venv "$venv"
    fi
fi
command -v npm >/dev/null || { echo "npm is needed (install Node.js 20 or newer)" >&2; exit 1; }

# Reinstall only when the project files changed since the last run (a stamp in the venv).
stamp="$venv/.run_example.stamp"
wanted="$(cat pyproject.toml example_app/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/todo-app" || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    step "Installing mountaineer-db and the example app (editable)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[embedded]" -e ./example_app 2>&1 \
        | { grep -v -e "^WARNING: Location" -e "ignored: it is neither" || true; }
    echo "$wanted" > "$stamp"
fi

views=example_app/todo_app/views
if [[ ! -d "$views/node_modules" || "$views/package-lock.json" -nt "$views/node_modules" ]]; then
    step "Installing the views' npm packages"
    (cd "$views" && npm install --no-audit --no-fund --loglevel=error && touch node_modules)
fi

cd example_app  # the app reads .env (DATABASE_EMBEDDED=true) from here
step "Building the frontend"
"$venv/bin/todo-app" build

step "Starting the embedded PostgreSQL and the app"
exec "$venv/bin/todo-app" runserver --host "${HOST:-127.0.0.1}" --port "${PORT:-5006}"
