"""The ASGI app: `uvicorn todo_app.main:app` (after `todo-app build`)."""

from todo_app.app import controller

app = controller.app
