"""Read replicas: the replica set and its health, read-your-writes positions.

`replica_status` is re-exported here: `mountaineer_db.replicas.replica_status(config)` was its
path before the package was grouped in folders.
"""

from mountaineer_db.replicas.replica_set import replica_status

__all__ = ["replica_status"]
