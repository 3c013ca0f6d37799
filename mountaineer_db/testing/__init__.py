"""Test kit for apps built on mountaineer_db (filled in by the testing-kit work)."""
