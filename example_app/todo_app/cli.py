"""The app's command line: `todo-app build | runserver | migrate ... | createdb | dropdb`.

Mountaineer's own commands plus mountaineer_db's database commands, mounted the way we
recommend: the group builds the app config once (starting the embedded development
database when `DATABASE_EMBEDDED=true`), and the mounted `mountaineer_db` commands use
that registered config.
"""

import click
from mountaineer.cli import handle_build, handle_runserver

from mountaineer_db import MountaineerDBError
from mountaineer_db.cli import createdb, dropdb, migrate
from mountaineer_db.servers.embedded import ensure_embedded_database
from todo_app.config import AppConfig

WEBCONTROLLER = "todo_app.main:controller"
DATABASE_COMMANDS = {"migrate", "createdb", "dropdb"}


@click.group()
@click.pass_context
def cli(context: click.Context) -> None:
    """The todo example app."""
    if context.invoked_subcommand in DATABASE_COMMANDS:
        # Registers the config; with DATABASE_EMBEDDED=true, starts (or reuses) the local server.
        # createdb and dropdb create and drop the app's database themselves, and say so.
        _app_config(apply_migrations=False, create_database=context.invoked_subcommand == "migrate")


def _app_config(*, apply_migrations: bool, create_database: bool = True) -> AppConfig:
    """The app config (registered), on the embedded database when DATABASE_EMBEDDED=true."""
    try:
        return ensure_embedded_database(AppConfig(), apply_migrations=apply_migrations, create_database=create_database)
    except MountaineerDBError as error:
        raise click.ClickException(" ".join(str(error).split())) from None


cli.add_command(migrate)
cli.add_command(createdb)
cli.add_command(dropdb)


@cli.command()
@click.option("--minify/--no-minify", default=True, help="Minify the JavaScript bundle.")
def build(minify: bool) -> None:
    """Build the frontend (client bundle and server-side rendering scripts)."""
    handle_build(webcontroller=WEBCONTROLLER, minify=minify)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5006, show_default=True)
def runserver(host: str, port: int) -> None:
    """Mountaineer's development server (rebuilds views on change), on the embedded database."""
    # This process starts the embedded database (and applies migrations) and stops it on exit;
    # the server's worker processes find it running and reuse it.
    config = _app_config(apply_migrations=True)
    if config.DATABASE_EMBEDDED:
        click.echo(f"Embedded PostgreSQL: {config.database_url} (data in .mountaineer_db/)")
    click.echo(f"Serving the todo app on http://{host}:{port}/ (Ctrl-C to stop)")
    handle_runserver(
        package="todo_app", webservice="todo_app.main:app", webcontroller=WEBCONTROLLER, host=host, port=port
    )
