"""Write coalescing: hot-path sends go out together at the end of an event-loop iteration.

Each send to a peer that sleeps in epoll wakes it, and waking a process whose CPU is idle
costs an inter-processor interrupt — expensive on a virtual machine, and charged to the
sender.  The proxy handles its events in batches (one loop iteration serves every ready
socket), so the responses and upstream requests a batch produces are queued here and
written back to back by one ``call_soon`` callback: a peer is woken about once per batch
instead of once per request, and then finds several requests to serve.  That saves the
proxy system and user time per request, and saves the upstream and the clients CPU too.
Nothing waits longer than the rest of the current iteration (the callback runs after the
iteration's I/O callbacks, before the loop polls again), nor behind more than
``MAX_QUEUED`` other sends.

Ordering is kept by construction: the queue is a single FIFO, and while it is not empty
every write made through this module is queued behind it, so each transport sees its bytes
in program order.  ``close`` and ``abort`` flush the queue first and then act at once, so
a transport never closes before the data written to it, and ``is_closing()`` answers as
if nothing were deferred.
"""

from __future__ import annotations

import asyncio

# Flush early once this many sends are queued, so that a long batch (or the proxy being
# preempted in the middle of one) does not hold every response back: a peer is then woken
# about once per this many sends, which keeps most of the saving.
MAX_QUEUED = 16


class Outbox:
    __slots__ = ("_loop", "_queue")

    def __init__(self) -> None:
        self._queue: list[tuple[asyncio.Transport, bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start coalescing on ``loop`` (None: every write goes out at once)."""
        self.flush()
        self._loop = loop

    def defer(self, transport: asyncio.Transport, data: bytes) -> None:
        """Send ``data`` at the end of this loop iteration (the hot path)."""
        queue = self._queue
        if not queue:
            loop = self._loop
            if loop is None:
                transport.write(data)
                return
            loop.call_soon(self.flush)
        queue.append((transport, data))
        if len(queue) >= MAX_QUEUED:
            self.flush()

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """Send ``data`` now, unless earlier sends are still queued (then after them)."""
        if self._queue:
            self._queue.append((transport, data))
        else:
            transport.write(data)

    def close(self, transport: asyncio.BaseTransport) -> None:
        if self._queue:
            self.flush()
        transport.close()

    def abort(self, transport: asyncio.Transport) -> None:
        if self._queue:
            self.flush()
        transport.abort()

    def flush(self) -> None:
        queue = self._queue
        if not queue:
            return
        self._queue = []
        for transport, data in queue:
            if not transport.is_closing():
                transport.write(data)


OUTBOX = Outbox()
