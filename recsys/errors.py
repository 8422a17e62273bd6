"""Errors a user can act on. The CLI prints them as one line (no traceback)."""


class RecsysError(Exception):
    """Base class for errors that carry a message meant for the user."""


class InputError(RecsysError):
    """The input or the configuration is wrong: the same call fails the same way again, so a retry
    cannot help. Airflow fails such a task at once, without its retries (:func:`recsys.jobs.failing_fast`);
    anything else (a service down, a timeout) is retried."""


class ConfigError(InputError):
    """A setting is missing or invalid."""


class ServiceError(RecsysError):
    """A service did not start, stop or answer."""


def error_text(exc: BaseException, limit: int = 600) -> str:
    """One line of at most ``limit`` characters for a log, a history record or a message (tritonclient's
    exceptions keep theirs in ``message()``)."""
    text = getattr(exc, "message", None)
    text = text() if callable(text) else (text or str(exc))
    return " ".join(str(text).split())[:limit]
