"""A bounded hand-over between two threads that never blocks forever: the producer gives up when told to stop."""

from __future__ import annotations

import queue
import threading
from typing import TypeVar

T = TypeVar("T")


def put_unless(q: queue.Queue[T], item: T, stop: threading.Event, poll: float = 0.1) -> bool:
    """Put `item` into the bounded `q`, waiting for room; False (not put) once `stop` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            continue
    return False
