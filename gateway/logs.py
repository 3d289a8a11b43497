"""Logging for the gateway's entry point: call context (model, version, request id) from a
contextvar, added by the formatter; optional JSON lines. Only ``__main__`` configures."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

#: (model, version, request id) of the call being served; each gRPC call runs in its own task.
CALL: ContextVar[tuple[str, str, str] | None] = ContextVar("modelgate_call", default=None)


def set_call(model: str, version: str = "", request_id: str = "") -> None:
    CALL.set((model, version, request_id))


class ContextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        call = CALL.get()
        if call is None:
            return text
        model, version, request_id = call
        extra = f" [model={model} version={version or '-'}"
        return text + extra + (f" request_id={request_id}]" if request_id else "]")


class JsonFormatter(logging.Formatter):
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
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
