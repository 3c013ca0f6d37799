"""`mountaineer_db.prometheus` moved to `mountaineer_db.observability.prometheus` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.observability.prometheus import *  # noqa: F403
from mountaineer_db.observability.prometheus import __all__ as __all__
