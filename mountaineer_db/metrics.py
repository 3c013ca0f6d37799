"""`mountaineer_db.metrics` moved: to `mountaineer_db.observability.metrics` (the snapshots) and
`mountaineer_db.engines.metrics` (the pool counters behind them); docs: Architecture.

The names stay importable from here for code written before the package was grouped in folders.
Nothing in mountaineer_db imports this module.
"""

from mountaineer_db.engines.metrics import *  # noqa: F403
from mountaineer_db.engines.metrics import __all__ as _all_1
from mountaineer_db.observability.metrics import *  # noqa: F403
from mountaineer_db.observability.metrics import __all__ as _all_0

__all__ = [*_all_0, *_all_1]
