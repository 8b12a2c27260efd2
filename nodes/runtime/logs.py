"""structlog set-up: JSON lines in production (no TTY), coloured key-values on a terminal.

Standard-library logging (aiokafka's, and the pure core's, which must not import structlog
because structlog imports asyncio) is routed through the same renderer, so one process writes
one log format.
"""

from __future__ import annotations

import logging
import sys

import structlog

from bus.errors import ConfigError

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")  # every --log-level's choices


def configure(*, json: bool | None = None, level: str = "info") -> None:
    """Configure structlog and stdlib logging once per process.

    Args:
        json: force JSON (True) or console (False) output; None picks JSON unless stderr is a TTY.
        level: minimum level name (debug, info, warning, error).

    Raises:
        ConfigError: ``level`` is not one of :data:`LEVELS`.
    """
    if level.lower() not in LEVELS:
        raise ConfigError("--log-level", f"{level!r} is unknown", f"use one of {', '.join(LEVELS)}")
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Not cached: a logger follows a later configure() (tests, embedding applications).
        # The hot paths log through loggers bound once per component, so the lookup this
        # costs is per component, not per record.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if as_json else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka logs every retried produce at WARNING; keep its chatter at our level or above.
    logging.getLogger("aiokafka").setLevel(max(numeric, logging.WARNING))


def _identity(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict
