"""`mountaineer_db.admin` moved to `mountaineer_db.migrations.admin` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.migrations.admin import *  # noqa: F403
from mountaineer_db.migrations.admin import __all__ as __all__
