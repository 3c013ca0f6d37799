"""The served app, configured from the environment and `.env`.

- `controller`: what `mountaineer` builds (`todo-app build`);
- `app`: the ASGI app (`uvicorn todo_app.main:app`, after the build).
"""

from todo_app.app import build_app
from todo_app.config import AppConfig

controller = build_app(AppConfig())
app = controller.app
