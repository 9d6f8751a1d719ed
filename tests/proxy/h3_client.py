"""A small HTTP/3 client for the proxy's tests, on aioquic's client side (the server side
is the proxy's; the client shares no code with it)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


@dataclass
class H3Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode()


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, H3Response] = {}
        self.waiters: dict[int, asyncio.Future[H3Response]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived | DataReceived):
            return
        response = self.responses.setdefault(event.stream_id, H3Response())
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                if name == b":status":
                    response.status = int(value)
                else:
                    response.headers[name.decode()] = value.decode()
        else:
            response.body += event.data
        waiter = self.waiters.get(event.stream_id)
        if event.stream_ended and waiter is not None and not waiter.done():
            waiter.set_result(response)

    async def request(
        self, method: str, authority: str, path: str, body: bytes | None = None
    ) -> H3Response:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"h3-test"),
        ]
        self.h3.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=True)
        waiter: asyncio.Future[H3Response] = asyncio.get_running_loop().create_future()
        self.waiters[stream_id] = waiter
        self.transmit()
        return await waiter


async def h3_requests(
    port: int,
    requests: list[tuple[str, str]],
    *,
    server_name: str = "example.com",
    cadata: str | None = None,
    body: bytes | None = None,
    timeout: float = 15.0,
) -> list[H3Response]:
    """Send ``(method, path)`` requests concurrently on one QUIC connection."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.server_name = server_name
    if cadata is None:
        configuration.verify_mode = ssl.CERT_NONE
    else:
        configuration.cadata = cadata.encode()
    async with (
        asyncio.timeout(timeout),
        connect("127.0.0.1", port, configuration=configuration, create_protocol=_Client) as client,
    ):
        assert isinstance(client, _Client)
        return list(
            await asyncio.gather(
                *(client.request(method, server_name, path, body) for method, path in requests)
            )
        )


def h3_get(port: int, path: str = "/", **kwargs: object) -> H3Response:
    return asyncio.run(h3_requests(port, [("GET", path)], **kwargs))[0]  # type: ignore[arg-type]
