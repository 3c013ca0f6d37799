"""pytest plugin entry point for mountaineer_db.testing."""
