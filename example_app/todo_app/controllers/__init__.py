"""Page controllers: one per page, each with its React view under `views/app/`."""
