"""Errors the actions raise; Mountaineer sends them to the page as typed JSON errors."""

from mountaineer import APIException

from mountaineer_db import map_integrity_errors
from todo_app.models import DESCRIPTION_MAX_LENGTH, OPEN_DESCRIPTION_CONSTRAINT


class InvalidDescription(APIException):
    """The description is empty or too long; nothing was written."""

    status_code: int = 400
    detail: str = "The description is not valid."


class TodoNotFound(APIException):
    """No todo has this id (deleted meanwhile, or never existed)."""

    status_code: int = 404
    detail: str = "This todo does not exist."


def clean_description(raw: str) -> str:
    """The description with surrounding whitespace removed, or `InvalidDescription`."""
    description = raw.strip()
    if not description:
        raise InvalidDescription(detail="Write something first: the description is empty.")
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidDescription(
            detail=f"That description has {len(description):,} characters; the limit is {DESCRIPTION_MAX_LENGTH:,}."
        )
    return description


open_todo_conflicts = map_integrity_errors(
    {OPEN_DESCRIPTION_CONSTRAINT: "An open todo with this description already exists."}
)
"""`with open_todo_conflicts:` around a commit that may duplicate an open todo: a 409 with that text
(adding one, renaming one, or reopening a done one), instead of an `IntegrityError`."""
