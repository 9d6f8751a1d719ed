"""The pure logic of the ssh plugin: merging deploy.yml's ``ssh:`` with ssh_config,
jump-host specs, known_hosts matching, and the ``ssh -t`` command line of
``interactive``. No servers here; tests/integration/test_ssh_transport.py uses real sshd."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shipyard.core.config.schema import SshConfig
from shipyard.core.errors import ConfigError
from shipyard.plugins._ssh_known_hosts import (
    KnownHosts,
    Verdict,
    host_key_name,
    key_fingerprint,
    parse_line,
)
from shipyard.plugins._ssh_settings import (
    KNOWN_HOSTS_ENV,
    SSH_CONFIG_ENV,
    Hop,
    Options,
    SshSettings,
    config_files,
    include_config_text,
    interactive_argv,
    parse_hop,
    parse_jumps,
    proxy_command_for_jumps,
    read_ssh_config,
    remote_command,
    resolve,
    settings_for,
    substitute_proxy_command,
)

pytestmark = pytest.mark.unit

ED25519_A = "AAAAC3NzaC1lZDI1NTE5AAAAIPJaZZlkV8S+8RZFSB6oJKFIUfiX+X+1/kAW1hY0xu+g"
ED25519_B = "AAAAC3NzaC1lZDI1NTE5AAAAIMPF+8/iLOmuVjenHn6BM8/LaG8qnIDjb+A6ItYY7z6b"


@pytest.fixture(autouse=True)
def _no_lab_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SSH_CONFIG_ENV, raising=False)
    monkeypatch.delenv(KNOWN_HOSTS_ENV, raising=False)


def ssh(**values: Any) -> SshConfig:
    """An ``ssh:`` section as validated from YAML (only ``values`` are "written")."""
    return SshConfig.model_validate(values)


def table(entries: dict[str, Options]) -> Any:
    return lambda host: entries.get(host, {})


# ---------------------------------------------------------------------------- jump specs


@pytest.mark.parametrize(
    ("text", "hop"),
    [
        ("bastion", Hop("bastion")),
        ("deploy@bastion", Hop("bastion", "deploy")),
        ("deploy@bastion:2222", Hop("bastion", "deploy", 2222)),
        ("10.0.0.1:2200", Hop("10.0.0.1", None, 2200)),
        ("[fe80::1]:2222", Hop("fe80::1", None, 2222)),
        ("root@[::1]", Hop("::1", "root")),
        ("fe80::1", Hop("fe80::1")),
    ],
)
def test_parse_hop(text: str, hop: Hop) -> None:
    assert parse_hop(text) == hop


@pytest.mark.parametrize("text", ["@bastion", "user@", "bastion:0", "bastion:http", ""])
def test_parse_hop_rejects_nonsense_with_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hop(text)
    assert len(info.value.lines()) == 1
    assert "ssh.proxy" in str(info.value)


def test_parse_jumps_chain() -> None:
    assert parse_jumps("a, u@b:23") == (Hop("a"), Hop("b", "u", 23))


# ---------------------------------------------------------------------------- merging


def test_defaults_are_kamals() -> None:
    settings = resolve(ssh(), "10.0.0.5", environ={})
    assert (settings.user, settings.hostname, settings.port) == ("root", "10.0.0.5", 22)
    assert settings.keepalive == 30
    assert settings.connect_timeout == 10
    assert not settings.keys_only and settings.agent_allowed
    assert settings.jumps == () and settings.proxy_command is None
    assert settings.known_hosts_files == (
        str(Path("~/.ssh/known_hosts").expanduser()),
        "/etc/ssh/ssh_known_hosts",
    )
    assert settings.log_level == "fatal"
    # Without keys_only the default ~/.ssh/id_* files are tried.
    assert str(Path("~/.ssh/id_ed25519").expanduser()) in settings.identity_files


def test_ssh_config_applies_where_deploy_yml_is_silent() -> None:
    lookup = table({"web1": {
        "hostname": "10.0.0.7", "user": "deploy", "port": "2222",
        "identityfile": ["~/.ssh/web_key"], "userknownhostsfile": "~/lab/known_hosts /tmp/other",
        "connecttimeout": "4", "hostkeyalias": "web1-alias", "forwardagent": "yes",
    }})  # fmt: skip
    settings = resolve(ssh(), "web1", lookup=lookup, environ={})
    assert (settings.hostname, settings.user, settings.port) == ("10.0.0.7", "deploy", 2222)
    assert settings.key_files == (str(Path("~/.ssh/web_key").expanduser()),)
    assert settings.known_hosts_files[:3] == (
        str(Path("~/lab/known_hosts").expanduser()), "/tmp/other", str(Path("~/.ssh/known_hosts").expanduser()),
    )  # fmt: skip
    assert settings.connect_timeout == 4
    assert settings.host_key_names == ("[web1-alias]:2222",)
    assert settings.forward_agent


def test_explicit_deploy_yml_values_win_over_ssh_config() -> None:
    lookup = table({"web1": {"user": "deploy", "port": "2222", "identityfile": ["/k/config_key"]}})
    settings = resolve(
        ssh(user="app", port=22, keys=["/k/yml_key"]), "web1", lookup=lookup, environ={}
    )
    assert (settings.user, settings.port) == ("app", 22)
    # Keys add up: deploy.yml's first.
    assert settings.key_files == ("/k/yml_key", "/k/config_key")


def test_keys_only_means_listed_keys_and_no_agent() -> None:
    settings = resolve(ssh(keys_only=True, keys=["~/.ssh/deploy"]), "h", environ={})
    assert settings.identity_files == (str(Path("~/.ssh/deploy").expanduser()),)
    assert not settings.agent_allowed
    via_config = resolve(ssh(), "h", lookup=table({"h": {"identitiesonly": "yes"}}), environ={})
    assert via_config.keys_only


def test_key_data_comes_from_secrets_and_is_never_shown() -> None:
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n-----END OPENSSH PRIVATE KEY-----"
    asked: list[str] = []

    def secret(name: str) -> str:
        asked.append(name)
        return pem

    settings = resolve(ssh(key_data=["SSH_KEY"]), "h", secret=secret, environ={})
    assert asked == ["SSH_KEY"]
    assert settings.key_data == (("SSH_KEY", pem),)
    assert "secretstuff" not in repr(settings)


def test_environment_adds_known_hosts_files() -> None:
    settings = resolve(
        ssh(), "h", environ={KNOWN_HOSTS_ENV: f"/lab/known_hosts{os.pathsep}/lab/more"}
    )
    assert settings.known_hosts_files[:2] == ("/lab/known_hosts", "/lab/more")


def test_dev_null_known_hosts_is_dropped() -> None:
    lookup = table({"h": {"globalknownhostsfile": "/dev/null"}})
    assert "/dev/null" not in resolve(ssh(), "h", lookup=lookup, environ={}).known_hosts_files


def test_proxy_jump_host_gets_its_own_settings() -> None:
    lookup = table({
        "bastion": {"hostname": "10.0.0.1", "identityfile": ["/k/bastion"], "userknownhostsfile": "/kh/bastion"},
        "web1": {"hostname": "10.0.0.2"},
    })  # fmt: skip
    settings = resolve(
        ssh(proxy="bastion", user="app", keys=["/k/app"]), "web1", lookup=lookup, environ={}
    )
    (jump,) = settings.jumps
    assert (jump.host, jump.hostname, jump.port, jump.user) == ("bastion", "10.0.0.1", 22, "app")
    assert jump.key_files == ("/k/app", "/k/bastion")
    assert jump.known_hosts_files[0] == "/kh/bastion"
    assert jump.jumps == ()
    assert settings.route == "app@10.0.0.2 via app@10.0.0.1"


def test_proxy_spec_user_and_port_win_for_the_jump_host() -> None:
    settings = resolve(ssh(proxy="ops@bastion:2200"), "web1", environ={})
    assert (settings.jumps[0].user, settings.jumps[0].port, settings.user) == ("ops", 2200, "root")


def test_deploy_yml_proxy_wins_over_ssh_config_proxy_jump() -> None:
    lookup = table({"web1": {"proxyjump": "other", "proxycommand": "nc %h %p"}})
    settings = resolve(ssh(proxy="bastion"), "web1", lookup=lookup, environ={})
    assert [j.host for j in settings.jumps] == ["bastion"]
    assert settings.proxy_command is None


def test_ssh_config_proxy_jump_and_chains() -> None:
    settings = resolve(ssh(), "web1", lookup=table({"web1": {"proxyjump": "a,b"}}), environ={})
    assert [j.host for j in settings.jumps] == ["a", "b"]
    none = resolve(ssh(), "web1", lookup=table({"web1": {"proxyjump": "none"}}), environ={})
    assert none.jumps == ()


def test_proxy_command_tokens() -> None:
    settings = resolve(
        ssh(proxy_command="nc -X 5 -x proxy:1080 %h %p # %r %%"), "10.0.0.9", environ={}
    )
    assert settings.proxy_command == "nc -X 5 -x proxy:1080 10.0.0.9 22 # root %"
    assert substitute_proxy_command("%x %h", "h", 1, "u") == "%x h"
    from_config = resolve(
        ssh(), "h", lookup=table({"h": {"proxycommand": "ssh -W h:22 gw"}}), environ={}
    )
    assert from_config.proxy_command == "ssh -W h:22 gw"


# ---------------------------------------------------------------------------- ssh_config files


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_files_true_reads_the_users_config_when_present(tmp_path: Path) -> None:
    files, default = config_files(True, {})
    assert str(Path("~/.ssh/config").expanduser()) not in files
    assert default
    user_config = write(Path("~/.ssh/config").expanduser(), "Host x\n  User y\n")
    files, default = config_files(True, {})
    assert files[0] == str(user_config) and default


def test_config_files_paths_false_and_environment(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "")
    b = write(tmp_path / "b", "")
    assert config_files(False, {}) == ([], False)
    assert config_files(str(a), {}) == ([str(a)], False)
    assert config_files([str(a), str(b)], {}) == ([str(a), str(b)], False)
    # The environment's file comes first (wins), even with `config: false`.
    assert config_files(False, {SSH_CONFIG_ENV: str(b)}) == ([str(b)], False)
    files, default = config_files(True, {SSH_CONFIG_ENV: str(b)})
    assert files[0] == str(b) and not default


def test_missing_named_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ssh.config: .*nope: no such ssh_config file"):
        config_files(str(tmp_path / "nope"), {})
    with pytest.raises(ConfigError, match=SSH_CONFIG_ENV):
        config_files(True, {SSH_CONFIG_ENV: str(tmp_path / "nope")})


def test_read_ssh_config_with_paramiko_first_value_wins_across_files(tmp_path: Path) -> None:
    first = write(tmp_path / "first", "Host web*\n  User first\n  IdentityFile ~/.ssh/first\n")
    second = write(tmp_path / "second", (
        "Host web1\n  HostName 10.1.1.1\n  User second\n  Port 2201\n  IdentityFile /k/second\n"
        "  UserKnownHostsFile /kh/web\n  ProxyJump gw\n"
        "Host *\n  ConnectTimeout 3\n"
    ))  # fmt: skip
    lookup = read_ssh_config([str(first), str(second)])
    settings = resolve(ssh(), "web1", lookup=lookup, environ={})
    assert (settings.hostname, settings.user, settings.port) == ("10.1.1.1", "first", 2201)
    assert settings.key_files == (str(Path("~/.ssh/first").expanduser()), "/k/second")
    assert settings.known_hosts_files[0] == "/kh/web"
    assert [j.host for j in settings.jumps] == ["gw"]
    assert settings.connect_timeout == 3


def test_settings_for_reads_files_named_by_the_config(tmp_path: Path) -> None:
    path = write(tmp_path / "cfg", "Host h1\n  HostName 10.210.0.11\n")
    settings = settings_for(ssh(config=str(path)), "h1", environ={})
    assert settings.hostname == "10.210.0.11"
    assert settings.config_files == (str(path),) and not settings.default_config
    assert settings_for(ssh(config=False), "h1", environ={}).hostname == "h1"


# ---------------------------------------------------------------------------- ssh -t argv


NASTY = [
    "printf",
    "%s",
    "a $(touch pwned) `touch pwned2` 'single' \"double\"\nnew line; touch pwned3 | & * ~ $HOME\\",
]


def option(argv: list[str], name: str) -> list[str]:
    return [
        argv[i + 1].split("=", 1)[1]
        for i, a in enumerate(argv[:-1])
        if a == "-o" and argv[i + 1].startswith(name + "=")
    ]


def test_interactive_argv_uses_the_same_settings() -> None:
    settings = SshSettings(
        host="web1", hostname="10.0.0.2", port=2222, user="app", key_files=("/k/a",), keys_only=True,
        known_hosts_files=("/kh/one", "/kh/with space"), connect_timeout=5, config_files=("/c/cfg",),
    )  # fmt: skip
    argv = interactive_argv(settings, NASTY, extra_keys=["/tmp/key_data_0"])
    assert argv[:4] == ["ssh", "-t", "-F", "/c/cfg"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "app"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-i"] == ["/k/a", "/tmp/key_data_0"]
    assert option(argv, "StrictHostKeyChecking") == ["yes"]
    assert option(argv, "UserKnownHostsFile") == ['/kh/one "/kh/with space"']
    assert option(argv, "IdentitiesOnly") == ["yes"]
    assert option(argv, "ServerAliveInterval") == ["30"]
    assert option(argv, "ConnectTimeout") == ["5"]
    # Destination after `--`; the command is quoted exactly once.
    assert argv[-3:-1] == ["--", "10.0.0.2"]
    assert shlex.split(argv[-1]) == NASTY


def test_interactive_argv_config_file_choice() -> None:
    base = SshSettings(host="h", hostname="h", port=22, user="root")
    assert interactive_argv(base, ["true"])[2:4] == ["-F", "/dev/null"]
    default = SshSettings(host="h", hostname="h", port=22, user="root", config_files=("/r/.ssh/config",),
                          default_config=True)  # fmt: skip
    assert "-F" not in interactive_argv(default, ["true"])
    several = SshSettings(host="h", hostname="h", port=22, user="root", config_files=("/a", "/b"))
    with pytest.raises(ValueError):
        interactive_argv(several, ["true"])
    assert interactive_argv(several, ["true"], config_file="/tmp/merged")[2:4] == [
        "-F",
        "/tmp/merged",
    ]
    assert include_config_text(["/a", "/b c"]) == 'Include /a\nInclude "/b c"\n'


def test_interactive_argv_agent_and_proxy_command() -> None:
    settings = SshSettings(host="h", hostname="h", port=22, user="root", forward_agent=True,
                           proxy_command="nc gw%1 22")  # fmt: skip
    argv = interactive_argv(settings, ["true"])
    assert "-A" in argv
    assert option(argv, "ProxyCommand") == ["nc gw%%1 22"]


def expand_tokens(command: str, host: str, port: int) -> str:
    """What ssh does to a ProxyCommand before running it."""
    return substitute_proxy_command(command, host, port, "ignored")


def test_jump_chain_proxy_command_survives_each_ssh_level() -> None:
    hop1 = SshSettings(host="a", hostname="10.0.0.1", port=22, user="u1", key_files=("/k/100%",),
                       known_hosts_files=("/kh/a",))  # fmt: skip
    hop2 = SshSettings(
        host="b", hostname="10.0.0.2", port=2200, user="u2", known_hosts_files=("/kh/b",)
    )
    target = SshSettings(host="t", hostname="10.0.0.3", port=22, user="root", jumps=(hop1, hop2))
    argv = interactive_argv(target, ["hostname"])
    (outer,) = option(argv, "ProxyCommand")
    # The target's ssh expands %h/%p to the target, then runs the command via sh -c.
    level2 = shlex.split(expand_tokens(outer, "10.0.0.3", 22))
    assert level2[-3:] == ["-W", "[10.0.0.3]:22", "10.0.0.2"]
    assert level2[level2.index("-l") + 1] == "u2" and level2[level2.index("-p") + 1] == "2200"
    assert option(level2, "UserKnownHostsFile") == ["/kh/b"]
    (inner,) = option(level2, "ProxyCommand")
    # hop b's ssh expands the inner command's tokens to itself.
    level1 = shlex.split(expand_tokens(inner, "10.0.0.2", 2200))
    assert level1[-3:] == ["-W", "[10.0.0.2]:2200", "10.0.0.1"]
    assert level1[level1.index("-l") + 1] == "u1"
    assert [level1[i + 1] for i, a in enumerate(level1) if a == "-i"] == ["/k/100%"]
    assert option(level1, "BatchMode") == ["yes"]
    assert proxy_command_for_jumps([]) is None


# ---------------------------------------------------------------------------- known_hosts


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def known(tmp_path: Path, text: str) -> KnownHosts:
    return KnownHosts.load([write(tmp_path / "known_hosts", text), tmp_path / "missing"])


def test_known_hosts_plain_hashed_ported_and_wildcards(tmp_path: Path) -> None:
    hosts = known(tmp_path, "\n".join([
        "# comment", "",
        f"h1,10.210.0.11 ssh-ed25519 {ED25519_A}",
        f"{hashed('10.210.0.12')} ssh-ed25519 {ED25519_A}",
        f"[10.210.0.13]:2222 ssh-ed25519 {ED25519_A}",
        f"*.example.com,!bad.example.com ssh-ed25519 {ED25519_A} comment here",
        "garbage line",
    ]))  # fmt: skip
    assert hosts.files == [str(tmp_path / "known_hosts")]
    ok = Verdict.KNOWN
    assert hosts.verdict(["10.210.0.11"], "ssh-ed25519", ED25519_A) is ok
    assert hosts.verdict(["h1"], "ssh-ed25519", ED25519_A) is ok
    assert hosts.verdict(["10.210.0.12"], "ssh-ed25519", ED25519_A) is ok
    assert hosts.verdict([host_key_name("10.210.0.13", 2222)], "ssh-ed25519", ED25519_A) is ok
    assert hosts.verdict(["10.210.0.13"], "ssh-ed25519", ED25519_A) is Verdict.UNKNOWN
    assert hosts.verdict(["web.EXAMPLE.com"], "ssh-ed25519", ED25519_A) is ok
    assert hosts.verdict(["bad.example.com"], "ssh-ed25519", ED25519_A) is Verdict.UNKNOWN
    assert hosts.verdict(["10.210.0.99"], "ssh-ed25519", ED25519_A) is Verdict.UNKNOWN


def test_known_hosts_changed_revoked_and_other_files(tmp_path: Path) -> None:
    hosts = known(tmp_path, f"h1 ssh-ed25519 {ED25519_A}\n@revoked * ssh-ed25519 {ED25519_B}\n")
    assert hosts.verdict(["h1"], "ssh-ed25519", ED25519_B) is Verdict.REVOKED
    hosts = known(
        tmp_path, f"h1 ssh-ed25519 {ED25519_A}\n@cert-authority * ssh-ed25519 {ED25519_B}\n"
    )
    assert hosts.verdict(["h1"], "ssh-ed25519", ED25519_B) is Verdict.CHANGED
    assert hosts.for_names(["h1"])[0].source == f"{tmp_path / 'known_hosts'}:1"
    # A stale entry in one file does not matter when another file has the right key.
    both = KnownHosts.load(
        [tmp_path / "known_hosts", write(tmp_path / "lab", f"h1 ssh-ed25519 {ED25519_B}\n")]
    )
    assert both.verdict(["h1"], "ssh-ed25519", ED25519_B) is Verdict.KNOWN


def test_known_key_types_steer_negotiation(tmp_path: Path) -> None:
    hosts = known(tmp_path, f"h1 ssh-ed25519 {ED25519_A}\nh1 ssh-rsa AAAAB3NzaC1yc2E=\n")
    assert hosts.key_types_for(["h1"]) == ["ssh-ed25519", "ssh-rsa"]
    assert parse_line("@revoked") is None
    assert parse_line("h ssh-ed25519 !!notbase64!!") is None


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pub = write(tmp_path / "k.pub", f"ssh-ed25519 {ED25519_A} x\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
    ).stdout
    assert key_fingerprint(ED25519_A) == out.split()[1]


# ---------------------------------------------------------------------------- start-up cost


def test_loading_the_plugins_does_not_import_paramiko(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from shipyard.core.plugins import ShipyardPluginManager\n"
        "m = ShipyardPluginManager(); m.load(project_dir=Path(sys.argv[1]))\n"
        "assert m.has_plugin('ssh') and m.has_plugin('local')\n"
        "import shipyard.plugins.ssh, shipyard.plugins.local\n"
        "print('paramiko' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- quoting and small pieces


def test_remote_command_is_quoted_once_for_the_remote_shell(tmp_path: Path) -> None:
    """What sshd does with the line: ``$SHELL -c LINE``. Run it through a local sh."""
    line = remote_command(NASTY)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True, cwd=cwd)
    assert out.stdout == NASTY[2]
    assert list(cwd.iterdir()) == []  # nothing was touched
    assert shlex.split(remote_command(["echo", ""])) == ["echo", ""]
    with pytest.raises(ValueError):
        remote_command([])


def test_unreachable_reasons_say_what_failed() -> None:
    import errno
    import socket

    import paramiko

    from shipyard.plugins._ssh_transport import _unreachable_reason

    settings = SshSettings(
        host="web1", hostname="10.0.0.2", port=22, user="root", connect_timeout=10
    )
    reason = lambda error: _unreachable_reason(settings, error)  # noqa: E731
    assert (
        reason(ConnectionRefusedError()) == "connection refused by 10.0.0.2:22 (is sshd running?)"
    )
    assert reason(TimeoutError()) == "timed out connecting to 10.0.0.2:22 after 10s"
    assert reason(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == (
        "cannot resolve host name 10.0.0.2 (Name or service not known)"
    )
    assert (
        reason(OSError(errno.EHOSTUNREACH, "No route to host"))
        == "no route to 10.0.0.2:22 (No route to host)"
    )
    assert reason(EOFError()) == "10.0.0.2:22 closed the connection during the SSH handshake"
    assert reason(paramiko.SSHException("Error reading SSH protocol banner")) == (
        "SSH handshake with 10.0.0.2:22 failed: Error reading SSH protocol banner"
    )


def test_line_splitter_keeps_partial_lines_across_chunks() -> None:
    from shipyard.plugins._ssh_transport import _LineSplitter

    seen: list[tuple[str, str]] = []
    splitter = _LineSplitter("stdout", lambda stream, line: seen.append((stream, line)))
    for chunk in (
        b"one\ntw",
        b"o\r\n",
        "thr\u00e9e".encode()[:4],
        "thr\u00e9e".encode()[4:] + b"\n",
        b"tail",
    ):
        splitter.feed(chunk)
    splitter.flush()
    assert seen == [
        ("stdout", "one"),
        ("stdout", "two"),
        ("stdout", "thr\u00e9e"),
        ("stdout", "tail"),
    ]


def test_key_data_text_loads_openssh_and_pem_keys(tmp_path: Path) -> None:
    from shipyard.plugins._ssh_transport import key_from_text

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ed")], check=True
    )
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(tmp_path / "rsa")],
                   check=True)  # fmt: skip
    assert key_from_text((tmp_path / "ed").read_text()).get_name() == "ssh-ed25519"
    # Secrets files often lose the trailing newline, or gain indentation-free blank lines.
    assert key_from_text("\n" + (tmp_path / "rsa").read_text().strip()).get_name() == "ssh-rsa"
    with pytest.raises(ValueError):
        key_from_text("not a key")


def test_sftp_paths_are_relative_to_home() -> None:
    from shipyard.plugins._ssh_transport import _sftp_path

    assert [_sftp_path(p) for p in ("~", "~/", "~/a/b", "a", "/etc/x")] == [
        ".",
        ".",
        "a/b",
        "a",
        "/etc/x",
    ]
