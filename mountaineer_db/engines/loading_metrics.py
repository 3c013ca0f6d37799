"""Counters of lazy loads and N+1 queries in this process: `loading_metrics()`.

```python
from mountaineer_db.engines.loading_metrics import loading_metrics

figures = loading_metrics()
figures.lazy_loads   # {("Todo", "owner", "HomeController.render"): 3, ...}
figures.n_plus_one   # {"HomeController.render": 1, ...}
```

- `lazy_loads`: lazy loads seen in request sessions with DATABASE_LAZY_LOADS=warn, by model,
  attribute and controller/action (`mountaineer_db.requests.lazy_loads`);
- `n_plus_one`: requests in which a statement ran more than DATABASE_N_PLUS_ONE_THRESHOLD times,
  by controller/action (`mountaineer_db.engines.n_plus_one`).

Totals since the process started (or `reset_loading_metrics()`); `mountaineer_db.observability.prometheus`
exports them. Nothing here runs unless those settings are on.
"""

from dataclasses import dataclass

__all__ = ["LoadingMetrics", "count_lazy_load", "count_n_plus_one", "loading_metrics", "reset_loading_metrics"]

_LIMIT = 4096  # distinct keys kept: they come from code (models, attributes, controllers), not from data

_lazy_loads: dict[tuple[str, str, str], int] = {}
_n_plus_one: dict[str, int] = {}


@dataclass(frozen=True)
class LoadingMetrics:
    """A snapshot of the counters; see the module docstring."""

    lazy_loads: dict[tuple[str, str, str], int]
    n_plus_one: dict[str, int]


def count_lazy_load(model: str, attribute: str, origin: str | None) -> int:
    """Count one lazy load; returns the new total for that key (1 the first time)."""
    key = (model, attribute, origin or "")
    if key not in _lazy_loads and len(_lazy_loads) >= _LIMIT:
        return 0
    total = _lazy_loads[key] = _lazy_loads.get(key, 0) + 1
    return total


def count_n_plus_one(origin: str | None) -> None:
    """Count one request with an N+1 warning."""
    key = origin or ""
    if key in _n_plus_one or len(_n_plus_one) < _LIMIT:
        _n_plus_one[key] = _n_plus_one.get(key, 0) + 1


def loading_metrics() -> LoadingMetrics:
    """The counters now (copies)."""
    return LoadingMetrics(dict(_lazy_loads), dict(_n_plus_one))


def reset_loading_metrics() -> None:
    """Forget every count (and so log each warn-mode lazy load once more); for tests."""
    _lazy_loads.clear()
    _n_plus_one.clear()
