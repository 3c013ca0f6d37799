"""An enum whose values a careless or hostile author could write; MIGRAPP_HOSTILE_VERSION picks them.

1: created with a line break and a single quote   2: adds values with quotes and a backslash
3: removes the one with a single quote            4: renames the one with a line break
"""

import os

from sqlalchemy import Column, Enum, Integer, MetaData, Table

VERSION = int(os.environ.get("MIGRAPP_HOSTILE_VERSION", "1"))

VALUES = {
    1: ["open", "line\nbreak", "it's"],
    2: ["open", "line\nbreak", "it's", 'say "hi"', "back\\slash", "o'clock"],
    3: ["open", "line\nbreak", 'say "hi"', "back\\slash", "o'clock"],
    4: ["open", "line\nfeed", 'say "hi"', "back\\slash", "o'clock"],
}[VERSION]

metadata = MetaData()

remark = Table(
    "remark",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("mood", Enum(*VALUES, name="mood"), nullable=False),
)
