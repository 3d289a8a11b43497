"""Logging for the agent: named loggers, the model in a contextvar, optional JSON lines.

Only :mod:`worker_agent.__main__` calls :func:`configure`.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

#: ``model@version`` the current task works on ("-" when none).
current_model: ContextVar[str] = ContextVar("current_model", default="-")


class ContextFilter(logging.Filter):
    """Adds ``record.model`` from :data:`current_model`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.model = current_model.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "model": getattr(record, "model", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(model)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kazoo").setLevel(logging.WARNING)
