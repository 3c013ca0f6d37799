"""Skip (loudly) the example app's tests when it is not installed; in CI that is a failure."""

import os

import pytest


def require_example_app() -> None:
    """Call at the top of a test module, before importing `todo_app`."""
    try:
        import todo_app  # noqa: F401
    except ImportError as error:
        message = f"the example app is not installed ({error}); run: pip install -e ./example_app"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
