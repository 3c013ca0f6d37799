"""Plain SQLAlchemy tables in their own MetaData; MIGRAPP_TABLES_VERSION picks the version."""

import os

from sqlalchemy import CheckConstraint, Column, ForeignKey, Integer, MetaData, String, Table, UniqueConstraint

VERSION = int(os.environ.get("MIGRAPP_TABLES_VERSION", "1"))

metadata = MetaData()

author = Table(
    "author",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
)
note = Table(
    "note",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("slug", String(40), nullable=False),
    Column("author_id", ForeignKey("author.id"), nullable=True, index=True),
    Column("stars", Integer, nullable=False, server_default="0"),
    UniqueConstraint("slug", "author_id"),
    CheckConstraint("stars >= 0", name="stars_positive"),
)
if VERSION >= 2:
    note.append_column(Column("body", String, nullable=True))
