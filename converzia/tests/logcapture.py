"""Capture what the configured console handler writes (formatter and filters included), as text lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def console_handler() -> logging.StreamHandler:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.get_name() == "console":
            return handler
    raise AssertionError("The LOGGING 'console' handler is not installed on the root logger.")


class CapturedLines:
    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Every line parsed as JSON (fails on a line that is not one JSON object)."""
        return [json.loads(line) for line in self.lines]


@contextmanager
def captured_console() -> Iterator[CapturedLines]:
    handler = console_handler()
    stream = io.StringIO()
    # Swapped directly, not with setStream(): that flushes the old stream, which may be a capture
    # stream of an earlier test that re-ran the logging configuration, closed since.
    with handler.lock:
        previous, handler.stream = handler.stream, stream
    try:
        yield CapturedLines(stream)
    finally:
        with handler.lock:
            handler.stream = previous
