"""Local server processes: PostgreSQL, PgBouncer, streaming replicas, the embedded dev database."""
