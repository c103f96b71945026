"""JSON log lines (structlog), one object per line, bound with the node's name and id."""

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Core events that a person watching a testnet should notice.
WARNING_EVENTS = frozenset({"peer_refused", "peer_protocol_error", "peer_penalised", "block_rejected",
                            "mined_block_refused", "reorg"})


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (stdout), from structlog and from the standard logging
    module (aiohttp, the RPC server), so a node's log is one machine-readable stream."""
    stream = stream or sys.stdout
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO))
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def node_logger(name: str, node_id: str) -> Any:
    return structlog.get_logger().bind(node=name, node_id=node_id)


def log_core_event(log: Any, fields: dict) -> None:
    """A log record from NodeCore.ready().logs: {'event': name, ...fields}."""
    fields = dict(fields)
    event = fields.pop("event", "core")
    if event in WARNING_EVENTS:
        log.warning(event, **fields)
    else:
        log.info(event, **fields)
