"""The CLI side of the control socket: one JSON request line, one JSON reply line.

Kept to the standard library so that ``docker exec kamal-proxy kamal-proxy deploy ...`` starts
fast.  There is deliberately no timeout: ``deploy`` blocks for as long as health checks and
draining take, exactly like kamal-proxy's net/rpc client.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from .flags import CLIError

MAX_REPLY_BYTES = 64 << 20


def call(socket_path: str, method: str, params: dict[str, Any]) -> Any:
    """Send one command and return its result, or raise CLIError with the server's message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise CLIError(f"dial unix {socket_path}: connect: {reason}") from None
        payload = json.dumps({"method": method, "params": params}).encode() + b"\n"
        sock.sendall(payload)
        reply = _read_line(sock)
    finally:
        sock.close()
    if not reply:
        raise CLIError("unexpected EOF")
    try:
        message = json.loads(reply)
    except ValueError:
        raise CLIError("unexpected reply from server") from None
    if not isinstance(message, dict):
        raise CLIError("unexpected reply from server")
    if message.get("error"):
        raise CLIError(str(message["error"]))
    return message.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > MAX_REPLY_BYTES:
            break
    return b"".join(chunks).split(b"\n", 1)[0]
