"""A todo list on Mountaineer 0.20 and mountaineer_db: the example app."""
