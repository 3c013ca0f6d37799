"""A table with a Python Enum column; MIGRAPP_ENUM_VERSION picks the enum's values.

1: open, tree, closed   2: adds archived   3: removes closed   4: renames tree to three
"""

import enum
import os

from sqlalchemy import Column, Enum, Integer, MetaData, Table, text

VERSION = int(os.environ.get("MIGRAPP_ENUM_VERSION", "1"))

VALUES = {
    1: ["open", "tree", "closed"],
    2: ["open", "tree", "closed", "archived"],
    3: ["open", "tree", "archived"],
    4: ["open", "three", "archived"],
}[VERSION]

Status = enum.Enum("Status", {name: name for name in VALUES})  # type: ignore[misc]

metadata = MetaData()

ticket = Table(
    "ticket",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("status", Enum(Status, name="ticket_status"), nullable=False, server_default=text("'open'")),
)
