"""Logging: one line per event (console key=value or JSON), tenant and object identity stamped.

`tenant` and `obj` ContextVars are set by the syncer/manager at the top of a tenant task
or a reconcile; trio copies them into child tasks and threads, and `_Context` stamps them
on every record. `_Redact` masks anything that looks like a bearer token or PEM key, a
last line of defence behind the rule that secrets are never put in messages.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Literal

from appliance.util.settings import ConfigBase

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")
obj: contextvars.ContextVar[str] = contextvars.ContextVar("obj", default="")

_SECRETISH = re.compile(
    r"(-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)"
    r"|((?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,})"
    r"|((?:client-key-data|token):\s*\S{8,})",
    re.S,
)


def redact(text: str) -> str:
    return _SECRETISH.sub("[redacted]", text)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.tenant = tenant.get()
        record.obj = obj.get()
        return True


class _Console(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        ctx = "".join(f" {k}={v}" for k in ("tenant", "obj") if (v := getattr(record, k, "")))
        line = f"{stamp} {record.levelname:<7} {record.name}{ctx} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created, "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in ("tenant", "obj"):
            if v := getattr(record, k, ""):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc))


class LogSettings(ConfigBase, frozen=True):
    """`[log]`: how much is logged, and in which line format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: console (key=value lines) | json
    format: Literal["console", "json"] = "console"


def configure(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if settings.format == "json" else _Console())
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
