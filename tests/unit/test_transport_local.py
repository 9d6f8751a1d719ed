"""The local transport: the host ``localhost`` is this machine (subprocess, files under
$HOME). The unit conftest gives every test a fresh HOME."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.core.errors import CommandFailed, HostError
from shipyard.core.testing import Project
from shipyard.plugins import local
from shipyard.plugins.local import LocalRelay, LocalTransport

pytestmark = pytest.mark.unit

NASTY = "a $(touch pwned) `touch pwned2` 'single' \"double\" \\ ; | & * ~\nsecond line\n"


@pytest.fixture
def home() -> Path:
    return Path(os.environ["HOME"])


@pytest.fixture
def transport(home: Path) -> LocalTransport:
    return LocalTransport()


def test_hook_answers_for_localhost_only(shipyard_project: Project) -> None:
    shipyard_project.write_config()
    ctx = shipyard_project.context("server", "exec")
    assert isinstance(local.shipyard_transport(ctx=ctx, host="localhost"), LocalTransport)
    assert local.shipyard_transport(ctx=ctx, host="10.0.0.1") is None


def test_connection_pool_gives_localhost_the_local_transport(shipyard_project: Project) -> None:
    shipyard_project.write_config()
    ctx = shipyard_project.context("server", "exec")
    try:
        first = ctx.connections.get("localhost")
        assert isinstance(first, LocalTransport) and first.kind == "local"
        assert ctx.connections.get("localhost") is first
    finally:
        ctx.connections.close_all()


def test_run_captures_output_and_status_in_home(transport: LocalTransport, home: Path) -> None:
    result = transport.run(["sh", "-c", "pwd; echo oops >&2; exit 3"])
    assert (result.host, result.exit_status, result.ok) == ("localhost", 3, False)
    assert result.stdout == f"{home}\n"
    assert result.stderr == "oops\n"
    assert result.argv == ("sh", "-c", "pwd; echo oops >&2; exit 3")
    with pytest.raises(CommandFailed, match=r"^\[localhost\] `sh` exited with 3: oops$"):
        result.check()


def test_arguments_arrive_verbatim_without_a_shell(transport: LocalTransport, home: Path) -> None:
    result = transport.run(["printf", "%s", NASTY]).check()
    assert result.stdout == NASTY
    assert not (home / "pwned").exists() and not (home / "pwned2").exists()


def test_stdin_reaches_the_command(transport: LocalTransport) -> None:
    assert transport.run(["cat"], stdin=b"secret\x00bytes\n").stdout == "secret\x00bytes\n"
    big = os.urandom(3 * 1024 * 1024).hex().encode()  # bigger than any pipe buffer
    assert transport.run(["wc", "-c"], stdin=big).stdout.strip() == str(len(big))
    # No stdin: the command sees end of file at once, never our terminal.
    assert transport.run(["cat"]).stdout == ""


def test_streaming_sees_lines_in_order(transport: LocalTransport) -> None:
    seen: list[tuple[str, str]] = []
    script = "for i in 1 2 3 4 5; do echo out$i; done; echo err >&2; printf tail"
    result = transport.run(
        ["sh", "-c", script], on_output=lambda stream, line: seen.append((stream, line))
    )
    assert [line for stream, line in seen if stream == "stdout"] == [
        "out1",
        "out2",
        "out3",
        "out4",
        "out5",
        "tail",
    ]
    assert [line for stream, line in seen if stream == "stderr"] == ["err"]
    assert result.stdout == "out1\nout2\nout3\nout4\nout5\ntail"


def test_missing_command_looks_like_a_shell_answer(transport: LocalTransport) -> None:
    result = transport.run(["no-such-command-anywhere"])
    assert result.exit_status == 127
    assert "command not found" in result.stderr


def test_timeout_kills_the_command(transport: LocalTransport) -> None:
    with pytest.raises(HostError, match=r"^\[localhost\] `sleep` did not finish within 0.2s$"):
        transport.run(["sleep", "30"], timeout=0.2)


def test_upload_creates_the_file_with_its_mode(transport: LocalTransport, home: Path) -> None:
    transport.upload(b"SECRET=1\n", "app.env", mode=0o600)
    target = home / "app.env"
    assert target.read_bytes() == b"SECRET=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # Replacing a world-readable file gives the new mode, never the old one.
    target.chmod(0o644)
    transport.upload(b"SECRET=2\n", "~/app.env", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"SECRET=2\n"
    assert sorted(p.name for p in home.iterdir()) == ["app.env"]  # no temp files left


def test_upload_a_local_file_to_an_absolute_path(transport: LocalTransport, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(200_000))
    transport.upload(source, str(tmp_path / "copy.bin"), mode=0o640)
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy.bin").stat().st_mode) == 0o640


def test_upload_into_a_missing_directory_names_the_host(transport: LocalTransport) -> None:
    with pytest.raises(HostError, match=r"^\[localhost\] cannot upload nowhere/app.env: "):
        transport.upload(b"x", "nowhere/app.env")


def test_download_round_trips_bytes(transport: LocalTransport, home: Path) -> None:
    data = bytes(range(256)) * 10
    transport.upload(data, "blob")
    assert transport.download("blob") == data
    assert transport.download(str(home / "blob")) == data
    with pytest.raises(HostError, match=r"^\[localhost\] cannot download missing: No such file"):
        transport.download("missing")


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the deployer"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_forward_of_the_same_port_is_a_no_op(transport: LocalTransport, http_server: int) -> None:
    forward = transport.forward_remote_port(http_server, "localhost", http_server)
    assert not isinstance(forward, LocalRelay)
    with urllib.request.urlopen(f"http://127.0.0.1:{http_server}/", timeout=10) as response:
        assert response.read() == b"hello from the deployer"
    forward.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_forward_to_another_port_relays(transport: LocalTransport, http_server: int) -> None:
    port = free_port()
    forward = transport.forward_remote_port(port, "127.0.0.1", http_server)
    try:
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                assert response.read() == b"hello from the deployer"
    finally:
        forward.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_interactive_inherits_the_terminal_and_returns_the_status(
    transport: LocalTransport,
) -> None:
    assert transport.interactive(["sh", "-c", "exit 7"]) == 7
    with pytest.raises(HostError, match="command not found"):
        transport.interactive(["no-such-command-anywhere"])
