"""A revision of mountaineer.migrations, the old tool (its files cannot be converted to Alembic)."""

from mountaineer.migrations.migration import MigrationRevisionBase
from mountaineer.migrations.migrator import Migrator


class MigrationRevision(MigrationRevisionBase):
    up_revision: str = "1715044020"
    down_revision: str | None = None

    async def up(self, migrator: Migrator) -> None:
        await migrator.actor.add_table("detailitem")

    async def down(self, migrator: Migrator) -> None:
        await migrator.actor.drop_table("detailitem")
