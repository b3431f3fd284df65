"""Approximate-time matching of several input streams (ROS-free; like message_filters'
ApproximateTimeSynchronizer, which is not on PyPI).

A policy of several inputs (a camera and `/joint_states`) needs one message of every input per
inference, taken at about the same time. `ApproximateSync.add(index, stamp_ns, item)` keeps a
bounded queue per input, keyed by stamp, and returns a `Match` as soon as the new message and
one waiting message of every other input lie within `slop` of each other (the newest stamp of
the set minus the oldest is at most `slop_ns`). Of each other input it takes the message
closest in time to the new one, so the set returned is the newest that the new message can
complete: newest matched set first.

Nothing is silently mixed or lost; every message ends as exactly one of:
- matched: part of a returned `Match`;
- unmatched: dropped without a partner, because its queue was full (the oldest goes), because a
  newer set was matched past it (a set is never matched out of time order), or at `clear()`;
- late: its stamp is not newer than the last matched stamp of its input, so it can never be
  matched (a set older than one already served would reach the controller out of order);
  it is refused at once.
`stats()` counts each (per input), for /diagnostics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Match(Generic[T]):
    """One matched set: an item per input (in input order) and its stamps (ns)."""

    items: tuple[T, ...]
    stamps_ns: tuple[int, ...]

    @property
    def newest_ns(self) -> int:
        """The newest stamp of the set (the stamp the node gives its result)."""
        return max(self.stamps_ns)

    @property
    def spread_ns(self) -> int:
        """Newest minus oldest stamp of the set (at most the slop)."""
        return max(self.stamps_ns) - min(self.stamps_ns)


@dataclass
class InputCounts:
    """What became of one input's messages so far."""

    received: int = 0
    matched: int = 0
    unmatched: int = 0
    late: int = 0
    waiting: int = 0


@dataclass
class SyncStats:
    """Counters of the synchronizer, per input, and the sets matched."""

    names: tuple[str, ...]
    per_input: list[InputCounts] = field(default_factory=list)
    matched_sets: int = 0

    def total(self, what: str) -> int:
        """The sum of one counter (received, matched, unmatched, late, waiting) over inputs."""
        return sum(getattr(c, what) for c in self.per_input)


class ApproximateSync(Generic[T]):
    """Matches messages of `len(names)` inputs whose stamps lie within `slop_ns` (thread-safe)."""

    def __init__(self, names: tuple[str, ...] | list[str], slop_ns: int,
                 queue_size: int = 10) -> None:
        if len(names) < 2:
            raise ValueError(f"approximate-time matching needs 2 or more inputs, not {len(names)}")
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0 ns, not {slop_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size}")
        self.names = tuple(names)
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._queues: list[dict[int, T]] = [{} for _ in self.names]
        self._last: list[int | None] = [None] * len(self.names)  # last matched stamp per input
        self._counts = [InputCounts() for _ in self.names]
        self._sets = 0

    def add(self, index: int, stamp_ns: int, item: T) -> Match[T] | None:
        """Offer one message of input `index`; the set it completes, or None (kept or late)."""
        if not 0 <= index < len(self.names):
            raise IndexError(f"input index {index} out of range 0..{len(self.names) - 1}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            counts = self._counts[index]
            counts.received += 1
            last = self._last[index]
            if last is not None and stamp_ns <= last:
                counts.late += 1
                return None
            queue = self._queues[index]
            if stamp_ns in queue:  # the same stamp again: the newer message replaces it
                counts.unmatched += 1
            queue[stamp_ns] = item
            while len(queue) > self.queue_size:
                del queue[min(queue)]
                counts.unmatched += 1
            match = self._match(index, stamp_ns)
            if match is not None:
                self._consume(match)
            return match

    def _match(self, index: int, stamp_ns: int) -> Match[T] | None:
        """The set of the new message with the closest message of every other input."""
        stamps = []
        for j, queue in enumerate(self._queues):
            if j == index:
                stamps.append(stamp_ns)
                continue
            near = [s for s in queue if abs(s - stamp_ns) <= self.slop_ns]
            if not near:
                return None
            stamps.append(min(near, key=lambda s: (abs(s - stamp_ns), -s)))
        if max(stamps) - min(stamps) > self.slop_ns:
            return None
        items = tuple(self._queues[j][s] for j, s in enumerate(stamps))
        return Match(items, tuple(stamps))

    def _consume(self, match: Match[T]) -> None:
        """Take the set out; what is older than it on each input can never match: unmatched."""
        self._sets += 1
        for j, stamp in enumerate(match.stamps_ns):
            queue, counts = self._queues[j], self._counts[j]
            counts.matched += 1
            for s in [s for s in queue if s <= stamp]:
                del queue[s]
                if s != stamp:
                    counts.unmatched += 1
            self._last[j] = stamp

    def clear(self) -> int:
        """Drop every waiting message (counted unmatched) and forget the last stamps; how many."""
        with self._lock:
            n = 0
            for queue, counts in zip(self._queues, self._counts, strict=True):
                counts.unmatched += len(queue)
                n += len(queue)
                queue.clear()
            self._last = [None] * len(self.names)
            return n

    def stats(self) -> SyncStats:
        """A snapshot of the counters."""
        with self._lock:
            per = [InputCounts(c.received, c.matched, c.unmatched, c.late, len(q))
                   for c, q in zip(self._counts, self._queues, strict=True)]
            return SyncStats(self.names, per, self._sets)
