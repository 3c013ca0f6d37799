from mountaineer.app import AppController
from mountaineer.render import LinkAttribute, Metadata

from myapp.config import AppConfig
from myapp.controllers.home import HomeController

controller = AppController(
    config=AppConfig(),  # type: ignore
    global_metadata=Metadata(links=[LinkAttribute(rel="stylesheet", href="/static/app_main.css")]),
)

controller.register(HomeController())
