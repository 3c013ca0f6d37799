"""`mountaineer_db.origins` moved to `mountaineer_db.engines.origins` (docs: Architecture).

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.engines.origins import *  # noqa: F403
from mountaineer_db.engines.origins import __all__ as __all__
