"""An app whose migrations folder `mountaineer-db migrate init` and `migrate generate` wrote
before the package was regrouped into folders (mountaineer_db at main 92c7622, issue 24).

`migrations/env.py` is exactly what that release's template wrote: it must keep working with
every later layout (tests/migrations/test_premove_app.py). Never regenerate this folder.
"""
