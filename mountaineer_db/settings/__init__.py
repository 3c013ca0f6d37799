"""Settings: `DatabaseConfig`, its checks and sources, URLs, the app's registered config."""
