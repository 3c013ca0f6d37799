"""tenant notes, under row-level security

Revision ID: 5e1a7c3b9d20
Revises:
Create Date: 2026-12-07 06:00:00

The table as `migrate generate` writes it, then the row-level security it cannot generate,
written by hand (docs/tenants.md, "Migrations"): enable and force RLS, and one policy that
compares the tenant column with the setting named by DATABASE_TENANT_SETTING. The migration
role owns the table; the app role only gets privileges on it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5e1a7c3b9d20"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "tenant_note",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("body", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_note")),
    )
    op.create_index(op.f("ix_tenant_note_tenant_id"), "tenant_note", ["tenant_id"], unique=False)
    op.execute("ALTER TABLE tenant_note ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenant_note FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON tenant_note "
        "USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))"
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP POLICY tenant_isolation ON tenant_note")
    op.drop_index(op.f("ix_tenant_note_tenant_id"), table_name="tenant_note")
    op.drop_table("tenant_note")
