"""Errors a user can act on. The CLI prints them as one line (no traceback)."""


class RecsysError(Exception):
    """Base class for errors that carry a message meant for the user."""


class ConfigError(RecsysError):
    """A setting is missing or invalid."""


class ServiceError(RecsysError):
    """A service did not start, stop or answer."""
