from mountaineer.database import Field, SQLModel


class DetailItem(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    description: str
