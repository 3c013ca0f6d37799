"""Read replicas: the replica set and its health, read-your-writes positions."""
