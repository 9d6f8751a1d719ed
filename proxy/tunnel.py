"""Byte-for-byte forwarding after a successful protocol upgrade (WebSocket, 101)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .outbox import OUTBOX

if TYPE_CHECKING:
    from .upstream import Target, UpstreamConnection


class Tunnel:
    __slots__ = ("_on_close", "client", "closed", "target", "upstream")

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: UpstreamConnection,
        target: Target,
        on_close: Callable[[], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.target = target
        self.closed = False
        self._on_close = on_close
        target.tunnels.add(self)

    def to_upstream(self, data: bytes) -> None:
        transport = self.upstream.transport
        if transport is not None and not transport.is_closing():
            OUTBOX.write(transport, data)

    def to_client(self, data: bytes) -> None:
        if not self.client.is_closing():
            OUTBOX.write(self.client, data)

    def pause_client(self, paused: bool) -> None:
        """The upstream's write buffer is full (or drained): stop (or resume) reading the client."""
        if self.client.is_closing():
            return
        if paused:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    def pause_upstream(self, paused: bool) -> None:
        transport = self.upstream.transport
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.target.tunnels.discard(self)
        OUTBOX.close(self.client)
        self.upstream.tunnel = None
        self.upstream.close()
        self._on_close()
