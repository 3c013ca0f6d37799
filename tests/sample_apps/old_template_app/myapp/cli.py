from click import command, group, option
from mountaineer.cli import handle_build, handle_runserver, handle_watch
from mountaineer.database.cli import handle_createdb
from mountaineer.io import async_to_sync
from mountaineer.migrations.cli import handle_apply, handle_generate, handle_rollback

from myapp import models
from myapp.config import AppConfig


@command()
@option("--port", default=5006, help="Port to run the server on")
def runserver(port: int):
    handle_runserver(package="myapp", webservice="myapp.main:app", webcontroller="myapp.app:controller", port=port)


@command()
def watch():
    handle_watch(package="myapp", webcontroller="myapp.app:controller")


@command()
def build():
    handle_build(webcontroller="myapp.app:controller")


@command()
@async_to_sync
async def createdb():
    _ = AppConfig()
    await handle_createdb(models)


@group
def migrate():
    pass


@migrate.command()
@option("--message", required=False)
@async_to_sync
async def generate(message: str | None):
    _ = AppConfig()
    await handle_generate(message=message)


@migrate.command()
@async_to_sync
async def apply():
    _ = AppConfig()
    await handle_apply()


@migrate.command()
@async_to_sync
async def rollback():
    _ = AppConfig()
    await handle_rollback()
