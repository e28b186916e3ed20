"""The one error type for mistakes a user can fix."""


class AepipeError(Exception):
    """A mistake the user can fix: a file, column or parameter."""
