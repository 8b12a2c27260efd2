"""structlog capture that does not depend on what an earlier test configured."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.testing import capture_logs


@contextmanager
def capture_all_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event logged inside, at every level (nodes.runtime.logs.configure may have set a level)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)
