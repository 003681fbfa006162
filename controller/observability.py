"""structlog configuration: console lines locally, JSON in a cluster (RAMP_LOG_FORMAT=json)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
