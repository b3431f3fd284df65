"""The bounded queue between the intake thread and the inference thread (ROS-free).

`newest_first` (the default) serves the freshest input: when the inference thread is free it
takes the newest waiting input and drops the older ones as stale ("superseded"); `fifo` takes
them in order. Either way at most `size` inputs wait; when full, the oldest is dropped
("queue_full"). After `close()` (shutdown, deactivate) nothing is taken and every input put is
handed back as dropped ("shutdown"), so each received input is answered or counted.
`wait_idle` lets shutdown wait until the input being inferred is done before the model closes.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class InputQueue(Generic[T]):
    """Thread-safe bounded queue with newest-first or FIFO order; reports what it drops."""

    def __init__(self, size: int = 1, newest_first: bool = True) -> None:
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.size = size
        self.newest_first = newest_first
        self.closed = False
        self._busy = False

    def configure(self, size: int | None = None, newest_first: bool | None = None) -> list[T]:
        """Change size or order at runtime; returns inputs dropped by a smaller size."""
        with self._cond:
            if size is not None:
                self.size = size
            if newest_first is not None:
                self.newest_first = newest_first
            dropped = []
            while len(self._items) > self.size:
                dropped.append(self._items.popleft())
            return dropped

    def put(self, item: T) -> tuple[list[T], str]:
        """Queue `item`; returns (dropped items, reason): the oldest when full ("superseded"
        under newest_first: a newer input replaced it; "queue_full" under fifo), or `item`
        itself after close() ("shutdown")."""
        with self._cond:
            if self.closed:
                return [item], "shutdown"
            dropped = []
            while len(self._items) >= self.size:
                dropped.append(self._items.popleft())
            self._items.append(item)
            return dropped, "superseded" if self.newest_first else "queue_full"

    def take(self) -> tuple[T | None, list[T]]:
        """The next input to infer (None if none or closed) and the stale ones it supersedes.

        Marks the queue busy until `done()`.
        """
        with self._cond:
            if self.closed or not self._items:
                return None, []
            if self.newest_first:
                item = self._items.pop()
                stale = list(self._items)
                self._items.clear()
            else:
                item, stale = self._items.popleft(), []
            self._busy = True
            return item, stale

    def done(self) -> None:
        """The input from the last take() is finished."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def close(self) -> list[T]:
        """Stop taking inputs; returns the ones still waiting (they will not be inferred)."""
        with self._cond:
            self.closed = True
            left = list(self._items)
            self._items.clear()
            return left

    def reopen(self) -> None:
        """Take inputs again (a re-activation)."""
        with self._cond:
            self.closed = False

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no input is being inferred; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
