"""Values the database cannot take, and driver errors described without the values in them.

Two kinds of error carry a value a client sent in their message:

- PostgreSQL's data exceptions, SQLSTATE class 22: `invalid byte sequence for encoding "UTF8":
  0x00` (22021, a NUL in text), `value "99999999999" is out of range for type integer`
  (22003), `invalid input syntax for type integer: "abc"` (22P02), ...;
- asyncpg's argument errors, raised before anything is sent: `invalid input for query
  argument $1: 99999999999999999999 (value out of int32 range)` (an int past the column's
  range, a str where an integer goes, text with an unpaired surrogate). asyncpg raises them as
  its `DataError` (SQLSTATE 22000) with the Python error chained; `hide_parameters` does not
  touch them.

`invalid_input_error_for(error)` turns either into `InvalidInputError`, an HTTP 422 whose
detail names the kind of problem ("The text holds a character the database cannot store")
and never the value; request sessions raise it in place of the driver's error.
`describe_error(error)` is the one description of a failure our log lines use: the driver's
error class, the SQLSTATE, the server's message where it holds no value, and the statement
with its placeholders, never its parameters.
"""

import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy import exc as sa_exc

from mountaineer_db.exceptions import InvalidInputError, MountaineerDBError

__all__ = ["DATA_EXCEPTION_CLASS", "describe_error", "driver_error_of", "invalid_input_error_for"]

DATA_EXCEPTION_CLASS: Final = "22"
"""SQLSTATE class of PostgreSQL's data exceptions (values a column or an operation cannot take)."""

_ARGUMENT_ERROR = re.compile(r"^(?:invalid input for )?query argument (\$\d+)")


@dataclass(frozen=True)
class _Kind:
    kind: str
    detail: str
    """What the client reads: what is wrong, never the value."""


_TEXT = _Kind("invalid_text", "The text holds a character the database cannot store (such as a NUL character).")
_RANGE = _Kind("out_of_range", "A number is outside the range the database can store.")
_DATETIME = _Kind("invalid_datetime", "A date or time is not valid, or out of the range the database can store.")
_TOO_LONG = _Kind("too_long", "A text is longer than the database allows.")
_TYPE = _Kind("invalid_value", "A value does not have the type the database expects.")
_DIVISION = _Kind("division_by_zero", "A value led to a division by zero.")

_KINDS: Final[dict[str, _Kind]] = {
    "22021": _TEXT,  # character_not_in_repertoire: a NUL byte, or bytes that are not UTF-8
    "22P05": _TEXT,  # untranslatable_character
    "22003": _RANGE,  # numeric_value_out_of_range
    "22008": _DATETIME,  # datetime_field_overflow
    "22007": _DATETIME,  # invalid_datetime_format
    "22009": _DATETIME,  # invalid_time_zone_displacement_value
    "22015": _RANGE,  # interval_field_overflow
    "22001": _TOO_LONG,  # string_data_right_truncation
    "22P02": _TYPE,  # invalid_text_representation
    "22P03": _TYPE,  # invalid_binary_representation
    "22012": _DIVISION,  # division_by_zero
}


def driver_error_of(error: BaseException) -> BaseException | None:
    """The asyncpg exception behind `error` (SQLAlchemy wraps it once or twice), or None."""
    candidate: BaseException | None = error
    for _ in range(4):
        if candidate is None:
            return None
        if type(candidate).__module__.startswith("asyncpg"):
            return candidate
        orig = getattr(candidate, "orig", None)
        candidate = orig if isinstance(orig, BaseException) else candidate.__cause__
    return None


def _argument(driver: BaseException) -> str | None:
    """`$2` when `driver` is asyncpg's error for an argument it could not encode, else None."""
    found = _ARGUMENT_ERROR.match(str(driver.args[0]) if driver.args else "")
    return found.group(1) if found else None


def _argument_reason(driver: BaseException) -> str:
    """Why asyncpg could not encode an argument, from the Python error it chains, without the value.

    `OverflowError` and `TypeError` from Python's conversions name limits and types only
    (`value out of int32 range`, `expected str, got int`); the others may quote the value.
    """
    cause = driver.__cause__
    if isinstance(cause, UnicodeEncodeError):
        return "text that is not valid UTF-8 (an unpaired surrogate)"
    if isinstance(cause, OverflowError | TypeError):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return type(cause).__name__ if cause is not None else "a value of the wrong type"


def _kind_of(driver: BaseException, code: str) -> _Kind:
    if _argument(driver) is not None:
        cause = driver.__cause__
        if isinstance(cause, UnicodeEncodeError):
            return _TEXT
        if isinstance(cause, OverflowError):
            return _RANGE
        return _TYPE
    return _KINDS.get(code, _Kind("invalid_value", f"A value is not valid for the database (SQLSTATE {code})."))


def _statement(error: BaseException) -> str:
    """SQLAlchemy's `[SQL: ...]` line: the statement with its placeholders (parameters are hidden)."""
    statement = getattr(error, "statement", None)
    if not isinstance(statement, str) or not statement:
        return ""
    return "\n[SQL: " + statement.strip() + "]"


def _driver_message(driver: BaseException, code: str | None) -> str:
    """The server's (or asyncpg's) message for logs: the first line, without any value."""
    argument = _argument(driver)
    if argument is not None:
        return f"invalid input for query argument {argument}: {_argument_reason(driver)}"
    if code is not None and code.startswith(DATA_EXCEPTION_CLASS):
        # The server quotes the offending value in most of these; the condition says enough.
        return _kind_of(driver, code).detail.rstrip(".")
    text = str(driver)
    return text.splitlines()[0] if text else ""


def describe_error(error: BaseException) -> str:
    """What went wrong, for a log line: never a value, a parameter, a DETAIL line or a password.

    - our own errors: their message (written to hold no value);
    - a driver error (wrapped by SQLAlchemy or not): `IntegrityError: UniqueViolationError
      (SQLSTATE 23505): duplicate key value violates unique constraint "uq_x"` and the
      statement on a second line; for data exceptions and argument errors the kind of
      problem replaces the message (which quotes the value);
    - anything else: its class name only; its message is the app's, and the framework
      that reports the error shows it.
    """
    if isinstance(error, MountaineerDBError):
        return f"{type(error).__name__}: {error}"
    driver = driver_error_of(error)
    if driver is not None:
        code = getattr(driver, "sqlstate", None)
        code = code if isinstance(code, str) else None
        where = f" (SQLSTATE {code})" if code else ""
        outer = f"{type(error).__name__}: " if driver is not error else ""
        return f"{outer}{type(driver).__name__}{where}: {_driver_message(driver, code)}{_statement(error)}"
    if isinstance(error, sa_exc.SQLAlchemyError):
        lines = str(error).splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else ''}{_statement(error)}"
    return type(error).__name__


def invalid_input_error_for(error: BaseException) -> InvalidInputError | None:
    """The `InvalidInputError` (HTTP 422) that `error` amounts to, or None.

    A data exception (SQLSTATE class 22) from the server, or an argument asyncpg could not
    encode. The error's message names the kind, the driver's error class, the SQLSTATE and
    the statement; its `detail` (what the client reads) only the kind.
    """
    driver = driver_error_of(error)
    code = getattr(driver, "sqlstate", None)
    if driver is None or not isinstance(code, str) or not code.startswith(DATA_EXCEPTION_CLASS):
        return None
    kind = _kind_of(driver, code)
    message = f"The database cannot take a value it was sent: {describe_error(error)}"
    return InvalidInputError(message, detail=kind.detail, kind=kind.kind, sqlstate=code)
