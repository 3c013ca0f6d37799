"""The two-tenant sample's table: notes, each belonging to one tenant.

On a registry of its own, so its MetaData holds only this app's table (SQLModel.metadata also
holds the other test apps').
"""

from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class TenantModel(SQLModel, registry=registry()):
    """Base of this app's table models."""


class Note(TenantModel, table=True):
    __tablename__ = "tenant_note"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(index=True)
    body: str


metadata = TenantModel.metadata
