"""Import pipecat's audio analyzers quietly.

pipecat logs through loguru at DEBUG (a banner on import, a line per model call) to stderr; the service logs
through structlog, so pipecat's own logger is switched off before the package is imported.
"""

from __future__ import annotations

from loguru import logger

logger.disable("pipecat")
