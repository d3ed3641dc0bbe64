"""Logging for the command line: configured once, here, and nowhere in the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import structlog

from thinktree.orchestrator.store import REDACTED, is_secret, scrub
from thinktree.sanitize import UNSAFE, clean


def _redact(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Credentials out of a log line, by the rules the run store keeps them out by: a key
    named like one (``api_key``, ``access_token``; not ``completion_tokens``) loses its
    value, and text shaped like one (``Bearer …``, ``sk-…``, ``?key=``) is masked."""
    for key, value in event.items():
        if is_secret(key, value):
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = scrub(value)
    return event


def _printable(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Control characters in a line for the terminal shown as stand-ins (``␛``): a log
    line may carry model output or a server's error text, and the console renderer
    writes string values as they are (an ESC sequence in one would reach the terminal)."""
    for key, value in event.items():
        if isinstance(value, str) and UNSAFE.search(value):
            event[key] = clean(value)
    return event


LOG_FILE_LIMIT = 50 * 1024 * 1024


def _rotate(path: Path, limit: int = LOG_FILE_LIMIT) -> None:
    """Start ``path`` afresh once it has grown past ``limit`` bytes, keeping the old one as
    ``PATH.1`` (replacing an older one): a log appended to by every run stays bounded."""
    try:
        if path.stat().st_size > limit:
            path.replace(path.with_name(path.name + ".1"))
    except OSError:
        pass  # no log yet, or one that cannot be moved: append to it as it is


def configure(*, verbose: bool = False, json_file: Path | None = None) -> None:
    """Readable lines on stderr for a person, JSON lines when logging to a file."""
    level = logging.DEBUG if verbose else logging.WARNING
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        _redact,
    ]
    stream: TextIO
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        _rotate(json_file)
        stream = json_file.open("a", encoding="utf-8")
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        level = logging.DEBUG if verbose else logging.INFO
    else:
        stream = sys.stderr
        processors += [_printable, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # Third-party libraries log through the standard library: quiet, and into the same
    # place (the file while a terminal view owns the screen).
    logging.basicConfig(
        level=logging.ERROR if not verbose else logging.INFO, stream=stream, force=True
    )
