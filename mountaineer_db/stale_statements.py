"""`mountaineer_db.stale_statements` moved to `mountaineer_db.engines.stale_statements` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.engines.stale_statements import *  # noqa: F403
from mountaineer_db.engines.stale_statements import __all__ as __all__
