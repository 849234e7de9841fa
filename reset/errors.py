"""Errors every layer may raise; each message names the file, line, field or key it is about."""


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


class ModelError(RuntimeError):
    """A model reference that cannot be resolved or loaded."""


# what a tracking store's "row already there" error says: SQLite, PostgreSQL, MySQL (directly, or in
# the message of a tracking server's HTTP error)
DUPLICATE_ROW = ("IntegrityError", "UNIQUE constraint failed", "UniqueViolation", "duplicate key", "Duplicate entry")


def duplicate_row(exc: BaseException) -> bool:
    """`exc` is a store's refusal to insert a row that another writer inserted first."""
    return any(m in str(exc) for m in DUPLICATE_ROW)
