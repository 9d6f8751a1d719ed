"""The command-line surface: pflag/cobra parsing rules, client-side validation, socket path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from proxy_harness import CLI, Proxy, UpstreamServer, free_port

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAMAL_PROXY", "SHIPYARD_PROXY"))
    }
    base["KAMAL_PROXY_SOCKET"] = "/nonexistent/dir/kamal-proxy.sock"
    base.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=base, timeout=30)


def assert_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""


def test_root_without_arguments_prints_help_and_succeeds() -> None:
    result = run_cli()
    assert result.returncode == 0
    assert "deploy" in result.stdout and "rollout" in result.stdout


def test_there_is_no_version_flag() -> None:
    assert_error(run_cli("--version"), "unknown flag: --version")


def test_unknown_flag_on_a_subcommand() -> None:
    assert_error(run_cli("deploy", "app", "--target=a:80", "--nope"), "unknown flag: --nope")


def test_deploy_takes_exactly_one_service_name() -> None:
    assert_error(run_cli("deploy", "--target=app:80"), "accepts 1 arg(s), received 0")
    assert_error(run_cli("deploy", "a", "b", "--target=app:80"), "accepts 1 arg(s), received 2")


def test_target_is_required() -> None:
    assert_error(run_cli("deploy", "app"), 'required flag(s) "target" not set')


def test_bare_number_durations_are_rejected_like_go() -> None:
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--deploy-timeout=30"),
        'invalid argument "30" for "--deploy-timeout" flag: time: missing unit in duration "30"',
    )
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--drain-timeout", "5x"),
        'invalid argument "5x" for "--drain-timeout" flag: time: unknown unit "x" in duration "5x"',
    )


def test_bool_flags_take_no_separate_value() -> None:
    # `--tls false` makes "false" a positional argument, exactly as pflag does.
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--host=a.com", "--tls", "false"),
        "accepts 1 arg(s), received 2",
    )


def test_invalid_bool_and_int_values() -> None:
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--tls=maybe"),
        'invalid argument "maybe" for "--tls" flag: strconv.ParseBool: parsing "maybe": invalid syntax',
    )
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--buffer-memory=lots"),
        'invalid argument "lots" for "--buffer-memory" flag: strconv.ParseInt: parsing "lots": invalid syntax',
    )


def test_flag_needs_an_argument() -> None:
    assert_error(run_cli("deploy", "app", "--target"), "flag needs an argument: --target")


def test_tls_requires_a_real_host() -> None:
    message = "service options invalid: host must be set when using TLS"
    assert_error(run_cli("deploy", "app", "--target=app:80", "--tls"), message)
    assert_error(run_cli("deploy", "app", "--target=app:80", "--tls", "--host="), message)
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--tls", "--host=*.example.com,"), message
    )


def test_tls_settings_only_on_the_root_path() -> None:
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--tls", "--host=a.com", "--path-prefix=/api"),
        "service options invalid: TLS settings must be specified on the root path service",
    )


def test_canonical_host_must_be_in_the_host_list() -> None:
    assert_error(
        run_cli(
            "deploy",
            "app",
            "--target=app:80",
            "--host=example.com,www.example.com",
            "--canonical-host=api.example.com",
        ),
        "service options invalid: canonical-host 'api.example.com' must be present in the hosts "
        "list: [example.com www.example.com]",
    )


def test_on_demand_tls_validations() -> None:
    prefix = "service options invalid: "
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--tls-on-demand-url=/allow"),
        prefix + "TLS must be enabled to use a TLS on-demand URL",
    )
    assert_error(
        run_cli(
            "deploy",
            "app",
            "--target=app:80",
            "--tls",
            "--host=a.com",
            "--tls-on-demand-url=https://example.com/allow",
        ),
        prefix + "cannot set hosts when using a TLS on-demand URL",
    )
    assert_error(
        run_cli(
            "deploy",
            "app",
            "--target=app:80",
            "--tls",
            "--tls-on-demand-url=ftp://example.com/allow",
        ),
        prefix + 'unsupported scheme "ftp" in tls-on-demand-url',
    )
    assert_error(
        run_cli(
            "deploy", "app", "--target=app:80", "--tls", "--tls-on-demand-url=//example.com/check"
        ),
        prefix + "tls-on-demand-url must be a path or an absolute http(s) URL",
    )


def test_size_limits_need_the_buffering_flag_to_be_given() -> None:
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--max-request-body=5"),
        "max-request-body can only be set when request buffering is enabled",
    )
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--max-response-body=5"),
        "max-response-body can only be set when response buffering is enabled",
    )
    # Only whether the flag was *given* matters, as in kamal-proxy: this passes validation
    # and fails later, on the (absent) socket.
    result = run_cli(
        "deploy", "app", "--target=app:80", "--buffer-requests=false", "--max-request-body=5"
    )
    assert result.returncode == 1
    assert "dial unix" in result.stderr


def test_certificate_flags_go_together() -> None:
    assert_error(
        run_cli("deploy", "app", "--target=app:80", "--tls-certificate-path=/c.pem"),
        "if any flags in the group [tls-certificate-path tls-private-key-path] are set they must "
        "all be set; missing [tls-private-key-path]",
    )


def test_rollout_set_needs_percent_or_list() -> None:
    assert_error(
        run_cli("rollout", "set", "app"),
        "at least one of the flags in the group [percent list] is required",
    )


def test_unknown_command_is_an_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 1
    assert result.stderr.startswith('Error: unknown command "frobnicate"')


def test_client_commands_report_a_missing_server() -> None:
    path = "/nonexistent/dir/kamal-proxy.sock"
    assert_error(run_cli("list"), f"dial unix {path}: connect: no such file or directory")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"KAMAL_PROXY_SOCKET": "/x/kamal.sock", "SHIPYARD_PROXY_SOCKET": "/y/s.sock"},
            "/x/kamal.sock",
        ),
        ({"KAMAL_PROXY_SOCKET": "", "SHIPYARD_PROXY_SOCKET": "/y/s.sock"}, "/y/s.sock"),
        ({"KAMAL_PROXY_SOCKET": "", "XDG_RUNTIME_DIR": "/run/u1"}, "/run/u1/kamal-proxy.sock"),
        (
            {"KAMAL_PROXY_SOCKET": "", "XDG_RUNTIME_DIR": "", "TMPDIR": "/tmp/t9"},
            "/tmp/t9/kamal-proxy.sock",
        ),
    ],
)
def test_socket_path_resolution(env: dict[str, str], expected: str) -> None:
    result = run_cli("ls", env=env)
    assert result.stderr.startswith(f"Error: dial unix {expected}: connect:")


def test_client_commands_do_not_load_the_server_stack() -> None:
    code = (
        "import sys\n"
        "from shipyard.proxy import cli\n"
        "cli.main(['list'])\n"
        "heavy = [m for m in ('uvloop', 'httptools', 'prometheus_client', 'jinja2') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KAMAL_PROXY_SOCKET": "/nonexistent/s.sock"},
    )
    assert "HEAVY=\n" in result.stdout


def test_list_and_remove_aliases(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    assert "web" in proxy.cli("ls", check=True).stdout
    proxy.cli("rm", "web", check=True)
    assert "web" not in proxy.cli("list", check=True).stdout


def test_remove_unknown_service(proxy: Proxy) -> None:
    result = proxy.cli("remove", "ghost")
    assert_error(result, "service not found")


def test_list_prints_kamal_proxy_table(proxy: Proxy, upstream: Upstreams) -> None:
    first = upstream("first")
    second = upstream("second")
    proxy.deploy("web", first.address, host=["a.example.com", "b.example.com"])
    proxy.deploy("api", second.address, path_prefix="/api")
    out = proxy.cli("list", check=True).stdout
    lines = out.split("\n")
    assert lines[0].startswith("\x1b[3;94mService\x1b[0m")
    assert lines[1].startswith("\x1b[1;34mapi\x1b[0m")  # sorted by name
    assert lines[2].startswith("\x1b[1;34mweb\x1b[0m")
    assert "\x1b[ma.example.com,b.example.com\x1b[0m" in lines[2]
    assert "\x1b[m*\x1b[0m" in lines[1] and "\x1b[m/api\x1b[0m" in lines[1]
    assert f"\x1b[m{first.address}\x1b[0m" in lines[2]
    assert "\x1b[mrunning\x1b[0m" in lines[2] and "\x1b[mno\x1b[0m" in lines[2]
    assert all(line.endswith("  ") for line in lines[:3])
    assert out.endswith("\n") and lines[3] == ""


def test_list_flags_may_repeat_and_use_commas(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.cli(
        "deploy",
        "web",
        f"--target={app.address}",
        "--host=a.com,b.com",
        "--host=c.com",
        "--health-check-interval=100ms",
        check=True,
    )
    for host in ("a.com", "b.com", "c.com"):
        assert proxy.get("/", host=host).status == 200
    assert proxy.get("/", host="d.com").status == 404


def start_run(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start `run` and return its first decisive output line (Server started or an error)."""
    proc = subprocess.Popen(
        [*CLI, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while line and b"Server started" not in line and b"Error" not in line:
        line = proc.stdout.readline()
    return proc, line


def stop_run(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=30)


def test_run_ports_come_from_the_environment(tmp_path: Path) -> None:
    chosen, ignored, plain = free_port(), free_port(), free_port()
    env = Proxy(tmp_path).env()
    env.update(
        SHIPYARD_PROXY_HTTP_PORT=str(chosen),
        KAMAL_PROXY_HTTP_PORT=str(ignored),
        HTTP_PORT="1",
        HTTPS_PORT=str(plain),
    )
    (tmp_path / "home").mkdir()
    proc, line = start_run(env)
    try:
        assert f'"http":{chosen}'.encode() in line
        assert f'"https":{plain}'.encode() in line
    finally:
        stop_run(proc)


def test_kamal_prefixed_variable_beats_the_plain_one(tmp_path: Path) -> None:
    prefixed, plain = free_port(), free_port()
    env = Proxy(tmp_path).env()
    env.update(
        KAMAL_PROXY_HTTP_PORT=str(prefixed), HTTP_PORT=str(plain), HTTPS_PORT=str(free_port())
    )
    (tmp_path / "home").mkdir()
    proc, line = start_run(env)
    try:
        assert f'"http":{prefixed}'.encode() in line
    finally:
        stop_run(proc)


def test_explicit_run_flags_beat_environment(make_proxy: Callable[..., Proxy]) -> None:
    instance: Proxy = make_proxy(extra_env={"KAMAL_PROXY_HTTP_PORT": str(free_port())})
    entry = instance.wait_for_log("Server started")
    assert entry["http"] == instance.http_port


def test_invalid_prefixed_value_means_the_builtin_default(tmp_path: Path) -> None:
    env = Proxy(tmp_path).env()
    # The prefixed variable is found first; it doesn't parse, so HTTPS_PORT is *not* used
    # and the built-in 443 is.
    env.update(KAMAL_PROXY_HTTPS_PORT="abc", HTTPS_PORT=str(free_port()))
    (tmp_path / "home").mkdir()
    proc, line = start_run(env, f"--http-port={free_port()}")
    try:
        assert b'"https":443' in line or b"listen tcp :443" in line
    finally:
        stop_run(proc)


def test_run_reports_a_port_in_use(tmp_path: Path, proxy: Proxy) -> None:
    env = Proxy(tmp_path / "other").env()
    (tmp_path / "other" / "home").mkdir(parents=True)
    result = subprocess.run(
        [*CLI, "run", f"--http-port={proxy.http_port}", f"--https-port={free_port()}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"Error: listen tcp :{proxy.http_port}: bind: address already in use" in result.stderr
