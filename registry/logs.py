"""Logging for every role's entry point: one text and one JSON formatter.

The call being served (model, version, request id) lives in a contextvar that each task sets
with :func:`set_call`; the formatters add it to every record. Only ``__main__`` modules call
:func:`configure`.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

#: (model, version, request id) of the work the current task does; each task has its own.
CALL: ContextVar[tuple[str, str, str] | None] = ContextVar("modelgate_call", default=None)


def set_call(model: str, version: str = "", request_id: str = "") -> None:
    """Name the model (and version, request id) the current task works on, for the logs."""
    CALL.set((model, version, request_id))


class ContextFormatter(logging.Formatter):
    """Text lines, with ``[model=... version=... request_id=...]`` when a call is set."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        call = CALL.get()
        if call is None:
            return text
        model, version, request_id = call
        extra = f" [model={model} version={version or '-'}"
        return text + extra + (f" request_id={request_id}]" if request_id else "]")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the call, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = CALL.get()
        if call is not None:
            doc["model"], doc["version"], doc["request_id"] = call
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str, as_json: bool = False) -> None:
    """Send every logger's records to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kazoo").setLevel(logging.WARNING)
