"""Engines: the engine registry and lifecycle, connecting, pools, statement recovery, instrumentation."""
