"""The ssh transport plugin against real sshd: the lab's hosts h1..h3 (tests/lab).

Every test builds a real project and Context and gets its transports the way commands
do, through ``ctx.connections`` (so through the ``shipyard_transport`` hook). HOME is a
temporary directory, so the deployer's own ~/.ssh never matters: the lab's key and
known_hosts are given explicitly (deploy.yml ``ssh.keys`` and
``$SHIPYARD_SSH_KNOWN_HOSTS``) or through the lab's ssh_config.

A few cases the lab cannot provide (an sshd without SFTP) use a private sshd on
127.0.0.1, started and stopped by the test.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from shipyard_lab import Host, Lab

from shipyard.core.context import Context
from shipyard.core.errors import (
    HostAuthFailed,
    HostError,
    HostKeyRefused,
    HostsFailed,
    HostUnreachable,
)
from shipyard.core.parallel import on_hosts
from shipyard.core.testing import Project
from shipyard.core.transport import Transport
from shipyard.plugins import ssh as ssh_plugin
from shipyard.plugins._ssh_settings import KNOWN_HOSTS_ENV, SSH_CONFIG_ENV
from shipyard.plugins._ssh_transport import RemoteForward, SshTransport

NASTY = (
    "a $(touch /tmp/pwned) `touch /tmp/pwned` 'single' \"double\" \\ ; | & * ~ $HOME\nsecond line\n"
)


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv(SSH_CONFIG_ENV, raising=False)
    monkeypatch.delenv(KNOWN_HOSTS_ENV, raising=False)
    monkeypatch.setenv("SHIPYARD_DISABLE_PLUGIN_AUTOLOAD", "1")


MakeContext = Callable[..., Context]


@pytest.fixture
def make_context(
    tmp_path: Path, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MakeContext]:
    """``make_context(hosts, **ssh)``: a Context for a project whose deploy.yml lists
    ``hosts`` and has ``ssh`` as its ssh section (default: the lab key, keys only, and
    the lab's known_hosts through the environment)."""
    contexts: list[Context] = []
    counter = iter(range(1000))

    def make(hosts: list[str], *, secrets: str | None = None, known_hosts: Path | None = None,
             **ssh: Any) -> Context:  # fmt: skip
        project = Project(tmp_path / f"project{next(counter)}")
        ssh.setdefault("keys", [str(lab.key_path)])
        ssh.setdefault("keys_only", True)
        ssh.setdefault("config", False)
        project.write_config({"service": "app", "image": "acme/app", "servers": hosts, "ssh": ssh})
        if secrets is not None:
            project.write_secrets(secrets)
        monkeypatch.setenv(KNOWN_HOSTS_ENV, str(known_hosts or lab.known_hosts))
        ctx: Context = project.context("server", "exec")
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.connections.close_all()


def hostname(transport: Transport) -> str:
    return transport.run(["hostname"]).check().stdout.strip()


def host_key_line(lab: Lab, name: str) -> tuple[str, str]:
    for line in lab.known_hosts.read_text().splitlines():
        names, key_type, key = line.split()[:3]
        if name in names.split(","):
            return key_type, key
    raise AssertionError(f"{name} is not in {lab.known_hosts}")


def accepted_ports(lab: Lab, host: Host) -> list[int]:
    """Source ports of the connections sshd on ``host`` accepted from the deployer."""
    log = lab.log_dir / f"{host.name}-sshd.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    pattern = rf"Accepted publickey for \S+ from {re.escape(lab.deployer_address)} port (\d+)"
    return [int(p) for p in re.findall(pattern, text)]


# ------------------------------------------------------------------------------ reaching hosts


def test_hostname_on_each_host_by_address(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    ctx = make_context([h.address for h in lab_hosts])
    results = on_hosts(ctx, ctx.hosts, hostname)
    results.raise_failures()
    assert results.succeeded == {h.address: h.name for h in lab_hosts}
    transport = ctx.connections.get(lab_hosts[0].address)
    assert isinstance(transport, SshTransport) and transport.kind == "ssh"


def test_hostname_through_the_labs_ssh_config(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    """Host names resolved by ssh_config (HostName, User, IdentityFile,
    UserKnownHostsFile), with no key or known_hosts given any other way."""
    ctx = make_context([h.name for h in lab_hosts], keys=[], config=str(lab.ssh_config),
                       known_hosts=Path("/nonexistent"))  # fmt: skip
    results = on_hosts(ctx, ctx.hosts, hostname)
    results.raise_failures()
    assert results.succeeded == {h.name: h.name for h in lab_hosts}


def test_shipyard_ssh_config_environment_variable(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context([lab_hosts[0].name], keys=[], known_hosts=Path("/nonexistent"))
    monkeypatch.setenv(SSH_CONFIG_ENV, str(lab.ssh_config))
    assert hostname(ctx.connections.get(lab_hosts[0].name)) == lab_hosts[0].name


def test_many_commands_reuse_one_connection_per_host(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    hosts = lab_hosts[:3]
    ctx = make_context([h.address for h in hosts])
    before, before_by_host = ssh_plugin.STATS.snapshot()
    for i in range(50):
        host = hosts[i % len(hosts)]
        result = ctx.connections.get(host.address).run(["echo", str(i)]).check()
        assert result.stdout == f"{i}\n"
    # And in parallel, through the fan-out every command uses.
    burst = on_hosts(ctx, [h.address for h in hosts], lambda t: [hostname(t) for _ in range(5)])
    burst.raise_failures()
    after, by_host = ssh_plugin.STATS.snapshot()
    assert after - before == len(hosts)
    for host in hosts:
        key = f"{host.address}:22"
        assert by_host[key] - before_by_host.get(key, 0) == 1
    transports = [ctx.connections.get(h.address) for h in hosts]
    assert all(isinstance(t, SshTransport) for t in transports)
    # sshd's side: each host accepted exactly one connection from our socket.
    for host, transport in zip(hosts, transports, strict=True):
        assert isinstance(transport, SshTransport)
        port = transport.local_port
        assert port is not None
        assert accepted_ports(lab, host).count(port) == 1


def test_jump_host_reaches_hosts_the_deployer_cannot(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    bastion, *inner = lab_hosts[:3]
    targets = [h.address for h in inner]
    with lab.ssh_blocked(*inner):
        # The firewall really blocks the direct way...
        direct = make_context(targets)
        failed = on_hosts(direct, targets, hostname)
        assert set(failed.failed) == set(targets)
        assert all(isinstance(e, HostUnreachable) for e in failed.failed.values())
        # ...and the jump host gets through, with one connection to it for both hosts.
        before, _ = ssh_plugin.STATS.snapshot()
        ctx = make_context(targets, proxy=f"root@{bastion.address}")
        results = on_hosts(ctx, targets, hostname)
        results.raise_failures()
        assert results.succeeded == {h.address: h.name for h in inner}
        after, _ = ssh_plugin.STATS.snapshot()
        assert after - before == 1 + len(inner)
        # Files and interactive commands go the same way.
        transport = ctx.connections.get(inner[0].address)
        transport.upload(b"via the bastion", "jumped.txt", mode=0o600)
        assert transport.download("jumped.txt") == b"via the bastion"
        assert transport.interactive(["sh", "-c", "exit 7"]) == 7


def test_proxy_command(lab: Lab, lab_hosts: list[Host], make_context: MakeContext) -> None:
    bastion, target = lab_hosts[0], lab_hosts[1]
    command = f"ssh -F {lab.ssh_config} -W %h:%p {bastion.name}"
    with lab.ssh_blocked(target):
        ctx = make_context([target.address], proxy_command=command)
        assert hostname(ctx.connections.get(target.address)) == target.name


def test_key_data_from_a_secret(lab: Lab, lab_hosts: list[Host], make_context: MakeContext) -> None:
    pem = lab.key_path.read_text().strip()
    ctx = make_context([lab_hosts[0].address], keys=[], key_data=["DEPLOY_KEY"],
                       secrets=f'DEPLOY_KEY="{pem}"\n')  # fmt: skip
    assert hostname(ctx.connections.get(lab_hosts[0].address)) == lab_hosts[0].name


# ------------------------------------------------------------------------------ refusals


def test_unknown_host_key_is_refused_naming_the_host(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext, tmp_path: Path
) -> None:
    first, second = lab_hosts[0], lab_hosts[1]
    key_type, key = host_key_line(lab, first.name)
    known = tmp_path / "known_hosts"
    known.write_text(f"{first.address} {key_type} {key}\n")
    ctx = make_context([first.address, second.address], known_hosts=known)
    results = on_hosts(ctx, ctx.hosts, hostname)
    assert results.succeeded == {first.address: first.name}
    error = results.failed[second.address]
    assert isinstance(error, HostKeyRefused)
    message = str(error)
    assert message.startswith(
        f"[{second.address}] host key is not known (add it to ~/.ssh/known_hosts, "
    )
    assert f"ssh-keyscan -H {second.address} >> ~/.ssh/known_hosts" in message
    assert "\n" not in message


def test_changed_host_key_is_refused(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext, tmp_path: Path
) -> None:
    first, second = lab_hosts[0], lab_hosts[1]
    key_type, wrong_key = host_key_line(lab, first.name)
    known = tmp_path / "known_hosts"
    known.write_text(f"{second.address} {key_type} {wrong_key}\n")
    ctx = make_context([second.address], known_hosts=known)
    with pytest.raises(HostKeyRefused) as info:
        ctx.connections.get(second.address)
    message = str(info.value)
    assert message.startswith(f"[{second.address}] host key has CHANGED")
    assert f"ssh-keygen -R {second.address}" in message
    assert f"{known}:1" in message


def test_wrong_key_is_an_auth_failure(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    host = lab_hosts[0]
    ctx = make_context([host.address], keys=[str(wrong)])
    with pytest.raises(HostAuthFailed) as info:
        ctx.connections.get(host.address)
    assert (
        str(info.value)
        == f"[{host.address}] authentication failed for root@{host.address} (offered {wrong})"
    )


def test_stopped_host_is_unreachable_and_the_others_still_answer(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    stopped = lab_hosts[1]
    ctx = make_context([h.address for h in lab_hosts])
    with stopped.sshd_stopped():
        results = on_hosts(ctx, ctx.hosts, hostname)
    assert results.succeeded == {h.address: h.name for h in lab_hosts if h is not stopped}
    error = results.failed[stopped.address]
    assert isinstance(error, HostUnreachable)
    assert (
        str(error)
        == f"[{stopped.address}] connection refused by {stopped.address}:22 (is sshd running?)"
    )
    with pytest.raises(HostsFailed) as info:
        results.raise_failures()
    assert info.value.lines() == [f"Error: {error}"]


def test_connect_timeout_is_unreachable(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext, tmp_path: Path
) -> None:
    target = lab_hosts[1]
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    ConnectTimeout 1\n")  # ssh_config's timeout is honoured
    ctx = make_context([target.address], config=str(config))
    with lab.ssh_blocked(target, drop=True), pytest.raises(HostUnreachable) as info:
        ctx.connections.get(target.address)
    assert (
        str(info.value)
        == f"[{target.address}] timed out connecting to {target.address}:22 after 1s"
    )


def test_lost_connection_is_reopened_on_next_use(
    lab: Lab, lab_hosts: list[Host], make_context: MakeContext
) -> None:
    host = lab_hosts[0]
    ctx = make_context([host.address])
    transport = ctx.connections.get(host.address)
    assert hostname(transport) == host.name
    # Stopping sshd also ends the open session, as if the server went away.
    with (
        host.sshd_stopped(),
        pytest.raises(HostUnreachable, match=rf"^\[{re.escape(host.address)}\] "),
    ):
        transport.run(["hostname"])
    assert hostname(transport) == host.name


# ------------------------------------------------------------------------------ commands


@pytest.fixture
def h1(lab: Lab, lab_hosts: list[Host], make_context: MakeContext) -> tuple[Host, Transport]:
    host = lab_hosts[0]
    return host, make_context([host.address]).connections.get(host.address)


def test_arguments_arrive_verbatim(h1: tuple[Host, Transport]) -> None:
    host, transport = h1
    host.run(["rm", "-f", "/tmp/pwned"])
    result = transport.run(["printf", "%s", NASTY]).check()
    assert result.stdout == NASTY
    assert (
        transport.run(["sh", "-c", 'printf "%s|" "$@"', "sh", "one two", "", "'", '"']).stdout
        == "one two||'|\"|"
    )
    assert host.run(["test", "-e", "/tmp/pwned"], check=False).returncode == 1


def test_exit_status_and_stderr_tail(h1: tuple[Host, Transport]) -> None:
    host, transport = h1
    result = transport.run(["sh", "-c", "echo out; echo bad thing >&2; exit 42"])
    assert (result.exit_status, result.stdout, result.stderr) == (42, "out\n", "bad thing\n")
    assert result.host == host.address
    with pytest.raises(
        HostError, match=rf"^\[{re.escape(host.address)}\] `sh` exited with 42: bad thing$"
    ):
        result.check()


def test_stdin_reaches_the_command(h1: tuple[Host, Transport]) -> None:
    _, transport = h1
    assert transport.run(["cat"], stdin=b"SECRET=s3cr3t\n").stdout == "SECRET=s3cr3t\n"
    big = os.urandom(4 * 1024 * 1024)
    digest = transport.run(["sha256sum"], stdin=big).check().stdout.split()[0]
    assert digest == hashlib.sha256(big).hexdigest()
    assert transport.run(["cat"]).stdout == ""  # no stdin: end of file at once


def test_streaming_sees_lines_in_order(h1: tuple[Host, Transport]) -> None:
    _, transport = h1
    seen: list[tuple[str, str]] = []
    script = "for i in $(seq 1 200); do echo line$i; done; echo warning >&2; printf partial"
    result = transport.run(
        ["sh", "-c", script], on_output=lambda stream, line: seen.append((stream, line))
    )
    stdout_lines = [line for stream, line in seen if stream == "stdout"]
    assert stdout_lines == [f"line{i}" for i in range(1, 201)] + ["partial"]
    assert [line for stream, line in seen if stream == "stderr"] == ["warning"]
    assert result.stdout.endswith("line200\npartial")


def test_command_timeout(h1: tuple[Host, Transport]) -> None:
    host, transport = h1
    with pytest.raises(
        HostError, match=rf"^\[{re.escape(host.address)}\] `sleep` did not finish within 0.5s$"
    ):
        transport.run(["sleep", "60"], timeout=0.5)
    assert hostname(transport) == host.name  # the connection is still good


def test_upload_with_mode_0600(h1: tuple[Host, Transport]) -> None:
    host, transport = h1
    name = f"app-{uuid.uuid4().hex[:8]}.env"
    try:
        transport.upload(b"SECRET=1\n", name, mode=0o600)
        assert host.run(["stat", "-c", "%a %s", f"/root/{name}"]).stdout.split() == ["600", "9"]
        # A world-readable file that is replaced gets the new mode.
        host.run(["chmod", "644", f"/root/{name}"])
        transport.upload(b"SECRET=2\n", f"~/{name}", mode=0o600)
        assert host.run(["stat", "-c", "%a", f"/root/{name}"]).stdout.strip() == "600"
        assert host.run(["cat", f"/root/{name}"]).stdout == "SECRET=2\n"
        leftovers = host.run(["sh", "-c", "ls -a /root | grep -c shipyard- || true"]).stdout.strip()
        assert leftovers == "0"
    finally:
        host.run(["rm", "-f", f"/root/{name}"])


def test_upload_a_file_and_download_round_trips_bytes(
    h1: tuple[Host, Transport], tmp_path: Path
) -> None:
    host, transport = h1
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    remote = f"/tmp/blob-{uuid.uuid4().hex[:8]}.bin"
    transport.upload(source, remote, mode=0o640)
    assert host.run(["stat", "-c", "%a", remote]).stdout.strip() == "640"
    assert transport.download(remote) == source.read_bytes()
    with pytest.raises(
        HostError, match=rf"^\[{re.escape(host.address)}\] cannot download /nonexistent: "
    ):
        transport.download("/nonexistent")
    with pytest.raises(
        HostError, match=rf"^\[{re.escape(host.address)}\] cannot upload /nonexistent/x: "
    ):
        transport.upload(b"x", "/nonexistent/x")


def test_interactive_runs_through_the_ssh_binary(h1: tuple[Host, Transport]) -> None:
    _, transport = h1
    assert transport.interactive(["sh", "-c", 'test "$1" = "a b\'c" && exit 7', "sh", "a b'c"]) == 7


# ------------------------------------------------------------------------------ port forwarding


@pytest.fixture
def deployer_http_server(lab: Lab) -> Iterator[int]:
    """A tiny HTTP server in the deployer's namespace, on a port of the lab's allow-list."""
    body = f"hello from the deployer {uuid.uuid4().hex}".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", lab.free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    "except OSError as error:\n"
    "    print('failed:', error); sys.exit(3)\n"
)


def test_remote_port_forward_reaches_the_deployer(
    h1: tuple[Host, Transport], deployer_http_server: int
) -> None:
    _, transport = h1
    port = deployer_http_server
    url = f"http://127.0.0.1:{port}/"
    # Nothing listens on the host's loopback before the forward...
    assert transport.run(["python3", "-c", FETCH, url]).exit_status == 3
    forward = transport.forward_remote_port(port, "127.0.0.1", port)
    try:
        for _ in range(3):
            answer = transport.run(["python3", "-c", FETCH, url]).check().stdout
            assert answer.startswith("hello from the deployer")
        # A second forward on the same connection works alongside the first.
        other = transport.forward_remote_port(0, "127.0.0.1", port)
        try:
            assert isinstance(other, RemoteForward)  # its remote_port was allocated by sshd
            answer = (
                transport.run(["python3", "-c", FETCH, f"http://127.0.0.1:{other.remote_port}/"])
                .check()
                .stdout
            )
            assert answer.startswith("hello from the deployer")
        finally:
            other.close()
        assert transport.run(["python3", "-c", FETCH, url]).check().stdout.startswith("hello")
    finally:
        forward.close()
    assert transport.run(["python3", "-c", FETCH, url]).exit_status == 3


# ------------------------------------------------------------------------------ no SFTP


@pytest.fixture
def sshd_without_sftp(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A private sshd on 127.0.0.1 without an SFTP subsystem: (port, key, known_hosts)."""
    if shutil.which("sshd", path="/usr/sbin:/usr/bin") is None:
        pytest.fail("openssh-server is needed (apt-get install openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until it listens (or dies)
            if b"Server listening" in line:
                break
        else:
            pytest.fail("the private sshd did not start")
        # Keep reading its log, so sshd never blocks on a full pipe.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        key_type, key = (d / "host_key.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
        yield port, d / "client_key", d / "known_hosts"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_files_without_sftp_fall_back_to_commands(
    sshd_without_sftp: tuple[int, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, key, known = sshd_without_sftp
    project = Project(tmp_path / "project")
    project.write_config(
        {
            "service": "app",
            "image": "acme/app",
            "servers": ["127.0.0.1"],
            "ssh": {"port": port, "keys": [str(key)], "keys_only": True, "config": False},
        }
    )
    monkeypatch.setenv(KNOWN_HOSTS_ENV, str(known))
    ctx: Context = project.context("server", "exec")
    try:
        transport = ctx.connections.get("127.0.0.1")
        target = tmp_path / "uploaded.env"
        transport.upload(b"SECRET=1\n", str(target), mode=0o600)
        assert target.read_bytes() == b"SECRET=1\n"
        assert target.stat().st_mode & 0o777 == 0o600
        assert transport.download(str(target)) == b"SECRET=1\n"
    finally:
        ctx.connections.close_all()
