"""structlog set-up: console lines for people, JSON for machines, and no secrets in either."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Values under these keys are never printed, whatever logs them.
_SECRET_KEYS = re.compile(r"(token|secret|api_key|apikey|password|authorization|key)$", re.IGNORECASE)


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for k in list(event):
        if _SECRET_KEYS.search(k) and event[k] is not None:
            event[k] = "***"
    return event


def configure(level: str = "info", *, json: bool = False) -> None:
    lvl = logging.getLevelName(level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
