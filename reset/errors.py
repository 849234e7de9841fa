"""Errors every layer may raise; each message names the file, line, field or key it is about."""


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


class ModelError(RuntimeError):
    """A model reference that cannot be resolved or loaded."""
