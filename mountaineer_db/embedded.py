"""`mountaineer_db.embedded` moved to `mountaineer_db.servers.embedded` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.servers.embedded import *  # noqa: F403
from mountaineer_db.servers.embedded import __all__ as __all__
