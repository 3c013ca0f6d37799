"""Observability: metrics, Prometheus, tracing, readiness."""
