"""`mountaineer_db.tracing` moved to `mountaineer_db.observability.tracing` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.observability.tracing import *  # noqa: F403
from mountaineer_db.observability.tracing import __all__ as __all__
