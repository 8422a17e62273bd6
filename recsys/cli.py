"""The ``recsys`` command line: one sub-command group per concern.

Each concern registers its own sub-commands (``recsys/<concern>/cli.py`` exposes
``register(subparsers)``), so this file only assembles them and imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

DEBUG_ENV = "RECSYS_DEBUG"
"""Set to 1 (true, yes, on): an error raises with its full traceback instead of the one-line message."""

# (module, help) in the order `recsys --help` lists them.
_GROUPS = [
    ("recsys.settings_cli", "every setting and its environment variable"),
    ("recsys.stack.cli", "local services: up, down, status"),
    ("recsys.data.cli", "input data: generate, import-movielens, import, validate, ingest"),
    ("recsys.features.cli", "NVTabular ETL"),
    ("recsys.training.cli", "train and evaluate models"),
    ("recsys.online.cli", "Redis online feature store: refresh, status, unavailable items"),
    ("recsys.events.cli", "live events: the event worker, status, refused inbox entries"),
    ("recsys.api.cli", "the HTTP API for applications: serve, token, send-event"),
    ("recsys.serving.cli", "recommendations from the served model; publish, rollback, offline top-N"),
    ("recsys.monitoring.cli", "feature drift checks: check, list, show, history"),
    ("recsys.demo", "the end-to-end demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys", description="Real-time recommender MLOps platform",
        epilog=f"Errors are one line; {DEBUG_ENV}=1 shows the full traceback.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name, _help in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that concern has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("RECSYS_IN_MERLIN_RUNTIME"):  # the re-run in the Merlin runtime would say it twice
        from recsys.settings import unknown_variables

        for message in unknown_variables():
            print(f"warning: {message}", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for users; tracebacks with RECSYS_DEBUG=1
        from recsys.errors import RecsysError

        user_error = exc if isinstance(exc, RecsysError) else _redis_not_answering(exc)
        if user_error is not None and not debugging():
            print(f"error: {user_error}", file=sys.stderr)
            return 2
        raise


def _redis_not_answering(exc: BaseException):
    """A ServiceError naming the Redis a command could not reach (redis-py's own error is a traceback that
    names only host and port, whichever command met it first), or None for any other error."""
    redis = sys.modules.get("redis")  # not imported: the error cannot be Redis's
    if redis is None or not isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return None
    from recsys.errors import ServiceError, error_text
    from recsys.settings import get_settings, masked_url

    return ServiceError(
        f"Redis at {masked_url(get_settings().redis)} is not answering ({error_text(exc)}); "
        "start the embedded one with `recsys stack up`, or check RECSYS_REDIS_URL"
    )


def debugging() -> bool:
    """True if :data:`DEBUG_ENV` asks for tracebacks (read from the environment, not the settings: an
    invalid setting is one of the errors it is there to explain)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


if __name__ == "__main__":
    sys.exit(main())
