"""Request sessions: dependencies, sessions, re-render sharing, commit hooks, retries, HTTP errors, lifespan."""
