"""`--log-format json`: one JSON object per log line, for log shippers (Loki, Elasticsearch,
CloudWatch...), carrying the node and, while a SIP request is being handled, its Call-ID, the
user it comes from (the From URI's user) and the flow it arrived on.

RequestDispatch sets LOG_CONTEXT around each request when JSON logs are on; the tasks it spawns
copy the context, so everything logged on that request's behalf carries it. A log call may
also pass `extra={"call_id": ..., "user": ..., "flow": ...}`, which wins over the context.
Peer-chosen text (the message's arguments, the Call-ID, the user) is escaped and cut short as
gateway/logsafe.py does for text logs; JSON then escapes what is left, so a record stays on one
line whatever the peer sent.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

from .logsafe import loggable

# (Call-ID, user, flow id) of the SIP request being handled, when JSON logs are on.
LOG_CONTEXT: ContextVar[tuple[str, str, str] | None] = ContextVar("ws2sip_log_context",
                                                                  default=None)
CONTEXT_FIELDS = ("call_id", "user", "flow")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": self._node,
        }
        context = LOG_CONTEXT.get()
        for index, name in enumerate(CONTEXT_FIELDS):
            value = getattr(record, name, None)
            if value is None and context is not None:
                value = context[index]
            if value:
                entry[name] = loggable(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
