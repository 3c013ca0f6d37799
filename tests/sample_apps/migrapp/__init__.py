"""A tiny Mountaineer-style app package for the migration, admin and CLI tests.

Tests copy this folder into a temporary directory (so `migrate init` writes there) and
choose the model version with the environment variables MIGRAPP_MODEL_VERSION (SQLModel
models in `models.py`) and MIGRAPP_TABLES_VERSION (plain SQLAlchemy tables in `tables.py`).
"""
