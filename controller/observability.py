"""structlog configuration: console lines locally, JSON in a cluster (RAMP_LOG_FORMAT=json)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _StderrLogger:
    """Writes to whatever sys.stderr is at the time of the call (it may be replaced after configuration)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str = "info", json_format: bool | None = None) -> None:
    if json_format is None:
        json_format = os.environ.get("RAMP_LOG_FORMAT", "console") == "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_format else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
