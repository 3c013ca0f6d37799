"""A small Mountaineer app whose tests use only `mountaineer_db.testing`."""
