"""Config loading: valid files resolve as Kamal would, and every mistake is reported with
its file, line, key path and what was expected, all at once, exit 1, no traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shipyard.core.config.loader import load_config
from shipyard.core.errors import ConfigError
from shipyard.core.testing import Project


def load(project: Project, text: str, **kwargs: object) -> object:
    project.write_config(text)
    return load_config(project.path, **kwargs)  # type: ignore[arg-type]


def problems(project: Project, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(project, text, **kwargs)
    return raised.value.problems


# --- valid files -----------------------------------------------------------------------


def test_a_host_list_is_the_web_role(shipyard_project: Project) -> None:
    config = load(
        shipyard_project, "service: app\nimage: acme/app\nservers: [10.0.0.1, 10.0.0.2]\n"
    )
    assert [r.name for r in config.roles] == ["web"]
    assert config.primary_host == "10.0.0.1"
    assert config.app_hosts == ["10.0.0.1", "10.0.0.2"]
    assert config.role("web").proxied
    assert config.repository == "acme/app"


def test_roles_primary_first_tags_and_proxy_defaults(shipyard_project: Project) -> None:
    config = load(
        shipyard_project,
        """
        service: app
        image: acme/app
        registry: {server: registry.example.com:5000}
        servers:
          workers:
            hosts: [10.0.0.3]
            cmd: bin/jobs
          web:
            hosts: [10.0.0.1, {10.0.0.2: [edge, eu]}]
        env:
          clear: {PORT: 3000, DEBUG: false}
          secret: [DB_PASSWORD, API_KEY:PROD_API_KEY]
          tags:
            edge: {REGION: edge}
        """,
    )
    assert [r.name for r in config.roles] == ["web", "workers"]
    assert config.app_hosts == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert config.host_tags("10.0.0.2") == ("edge", "eu")
    assert not config.role("workers").proxied
    assert config.role("web").env.clear == {"PORT": "3000", "DEBUG": "false"}
    assert config.role("web").env.secrets == (
        ("DB_PASSWORD", "DB_PASSWORD"),
        ("API_KEY", "PROD_API_KEY"),
    )
    assert config.repository == "registry.example.com:5000/acme/app"
    assert config.container_name("web", "abc") == "app-web-abc"


def test_role_proxy_map_is_merged_over_the_root_proxy(shipyard_project: Project) -> None:
    config = load(
        shipyard_project,
        """
        service: app
        image: acme/app
        proxy: {host: app.example.com, app_port: 3000, healthcheck: {path: /health}}
        servers:
          web: [10.0.0.1]
          api:
            hosts: [10.0.0.2]
            proxy: {path_prefix: /api}
        """,
    )
    api = config.role("api").proxy
    assert api is not None
    assert (api.host_names, api.app_port, api.healthcheck.path, api.prefixes) == (
        ["app.example.com"],
        3000,
        "/health",
        ["/api"],
    )


def test_kamal_defaults_apply(shipyard_project: Project) -> None:
    schema = load(shipyard_project, "service: app\nimage: acme/app\nservers: [h1]\n").schema
    assert (
        schema.retain_containers,
        schema.readiness_delay,
        schema.deploy_timeout,
        schema.drain_timeout,
    ) == (5, 7, 30, 30)
    assert (schema.ssh.user, schema.ssh.port, schema.sshkit.max_concurrent_starts) == (
        "root",
        22,
        30,
    )
    assert schema.proxy.healthcheck.path == "/up"
    assert schema.proxy.logging.request_headers == ["Cache-Control", "Last-Modified", "User-Agent"]


def test_destination_file_is_deep_merged(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        "service: app\nimage: acme/app\nservers: [h1]\nenv: {clear: {A: 1, B: 2}}\n"
    )
    shipyard_project.write_config(
        "servers: [s1, s2]\nenv: {clear: {B: 3}}\n", destination="staging"
    )
    config = load_config(shipyard_project.path, destination="staging")
    assert config.app_hosts == ["s1", "s2"]
    assert config.role("web").env.clear == {"A": "1", "B": "3"}
    assert config.container_name("web", "v1") == "app-web-staging-v1"
    assert config.latest_tag == "latest-staging"


def test_jinja_renders_the_environment_and_x_keys_are_ignored(
    shipyard_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_HOST", "10.9.9.9")
    config = load(
        shipyard_project,
        'service: app\nimage: acme/app\nservers: ["{{ env.WEB_HOST }}"]\nx-notes: {anything: [1, 2]}\n',
    )
    assert config.app_hosts == ["10.9.9.9"]
    assert "x-notes" not in config.data


def test_yaml_anchors_and_merge_keys_work(shipyard_project: Project) -> None:
    config = load(
        shipyard_project,
        """
        service: app
        image: acme/app
        x-common: &common
          cmd: bin/run
          hosts: [h2]
        servers:
          web: [h1]
          jobs:
            <<: *common
            cmd: bin/jobs
        """,
    )
    assert config.role("jobs").cmd == "bin/jobs"
    assert config.role("jobs").host_names == ["h2"]


def test_local_registry_makes_image_optional(shipyard_project: Project) -> None:
    config = load(
        shipyard_project, "service: app\nservers: [h1]\nregistry: {server: 'localhost:5555'}\n"
    )
    assert config.repository == "localhost:5555/app"


def test_host_and_role_filters_with_wildcards(shipyard_project: Project) -> None:
    config = load(
        shipyard_project,
        "service: app\nimage: a\nservers:\n  web: [web-1, web-2]\n  jobs: [job-1]\n",
    )
    assert config.select(roles=("j*",))[1] == ["job-1"]
    assert config.select(hosts=("web-*",))[1] == ["web-1", "web-2"]
    assert config.select(primary=True)[1] == ["web-1"]
    roles, hosts = config.select(hosts=("job-1",))
    assert [r.name for r in roles] == ["jobs"] and hosts == ["job-1"]


# --- mistakes: each gives exactly this error -------------------------------------------

MISTAKES: list[tuple[str, str, list[str]]] = [
    ("missing service", "image: a\nservers: [h1]\n", ["config/deploy.yml:1: service: is required"]),
    (
        "service with spaces",
        "service: my app\nimage: a\nservers: [h1]\n",
        ["config/deploy.yml:1: service: may contain only letters, digits, `-` and `_`"],
    ),
    (
        "missing image",
        "service: app\nservers: [h1]\n",
        [
            "config/deploy.yml:1: image: is required (unless registry.server is a local registry, localhost:PORT)"
        ],
    ),
    (
        "no servers and no accessories",
        "service: app\nimage: a\n",
        [
            "config/deploy.yml:1: servers: is required: list the hosts to deploy to (or define accessories)"
        ],
    ),
    (
        "unknown top-level key",
        "service: app\nimage: a\nservers: [h1]\nservrs: [h2]\n",
        [
            "config/deploy.yml:4: servrs: unknown key (check the spelling; `shipyard docs` lists the keys)"
        ],
    ),
    (
        "host that is a number",
        "service: app\nimage: a\nservers:\n  web:\n    hosts: [h1, 5]\n",
        ["config/deploy.yml:5: servers.web.hosts[1]: expected a string, got 5"],
    ),
    (
        "unknown role key",
        "service: app\nimage: a\nservers:\n  web:\n    hosts: [h1]\n    comand: x\n",
        [
            "config/deploy.yml:6: servers.web.comand: unknown key (check the spelling; `shipyard docs` lists the keys)"
        ],
    ),
    (
        "servers as a string",
        "service: app\nimage: a\nservers: h1\n",
        ["config/deploy.yml:3: servers: expected a list or a mapping, got 'h1'"],
    ),
    (
        "healthcheck interval not a number",
        "service: app\nimage: a\nservers: [h1]\nproxy:\n  healthcheck:\n    interval: soon\n",
        ["config/deploy.yml:6: proxy.healthcheck.interval: expected an integer, got 'soon'"],
    ),
    (
        "bad boot limit",
        "service: app\nimage: a\nservers: [h1]\nboot:\n  limit: lots\n",
        ['config/deploy.yml:5: boot.limit: must be a number or a percentage such as "25%"'],
    ),
    (
        "zero retain_containers",
        "service: app\nimage: a\nservers: [h1]\nretain_containers: 0\n",
        ["config/deploy.yml:4: retain_containers: must be at least 1, got 0"],
    ),
    (
        "app_port out of range",
        "service: app\nimage: a\nservers: [h1]\nproxy: {app_port: 70000}\n",
        ["config/deploy.yml:4: proxy.app_port: must be at most 65535, got 70000"],
    ),
    (
        "primary role missing",
        "service: app\nimage: a\nservers:\n  workers: [h1]\n",
        [
            "config/deploy.yml:1: primary_role: role `web` is not defined in servers (roles: workers)"
        ],
    ),
    (
        "empty role",
        "service: app\nimage: a\nservers:\n  web: [h1]\n  jobs: []\n",
        [
            "config/deploy.yml:5: servers.jobs: has no hosts (add hosts, or set allow_empty_roles: true)"
        ],
    ),
    (
        "reserved label",
        "service: app\nimage: a\nservers: [h1]\nlabels:\n  role: x\n",
        [
            "config/deploy.yml:5: labels.role: `role` is a reserved label set by shipyard; choose another name"
        ],
    ),
    (
        "ssl without host",
        "service: app\nimage: a\nservers: [h1]\nproxy:\n  ssl: true\n",
        [
            "config/deploy.yml:4: proxy: `ssl: true` needs `host` or `hosts` (Let's Encrypt needs a name)"
        ],
    ),
    (
        "ssl on two hosts",
        "service: app\nimage: a\nservers: [h1, h2]\nproxy: {ssl: true, host: a.com}\n",
        [
            "config/deploy.yml:4: proxy.ssl: Let's Encrypt (ssl: true) needs a single host, but role `web` has 2; use custom certificates or a load balancer"
        ],
    ),
    (
        "host and hosts both",
        "service: app\nimage: a\nservers: [h1]\nproxy: {host: a.com, hosts: [b.com]}\n",
        ["config/deploy.yml:4: proxy: use either `host` or `hosts`, not both"],
    ),
    (
        "accessory with two host selectors",
        "service: app\nimage: a\nservers: [h1]\naccessories:\n  db:\n    image: mysql\n    host: h1\n    role: web\n",
        [
            "config/deploy.yml:5: accessories.db: give exactly one of host, hosts, role, roles, tag, tags (got host, role)"
        ],
    ),
    (
        "accessory without image",
        "service: app\nimage: a\nservers: [h1]\naccessories:\n  db:\n    host: h1\n",
        ["config/deploy.yml:5: accessories.db.image: is required"],
    ),
    (
        "registry password list of two",
        "service: app\nimage: a\nservers: [h1]\nregistry:\n  password: [A, B]\n",
        [
            "config/deploy.yml:5: registry.password: a secret reference is a list with exactly one secret name"
        ],
    ),
    (
        "alias shadows a command",
        "service: app\nimage: a\nservers: [h1]\naliases:\n  deploy: app exec ls\n",
        [
            "config/deploy.yml:5: aliases.deploy: `deploy` is a built-in command; choose another alias name"
        ],
    ),
    (
        "env tags inside a role",
        "service: app\nimage: a\nservers:\n  web:\n    hosts: [h1]\n    env:\n      tags: {x: {A: 1}}\n",
        ["config/deploy.yml:7: servers.web.env.tags: env tags are allowed only in the root env"],
    ),
    (
        "duplicate host",
        "service: app\nimage: a\nservers: [h1, h1]\n",
        ["config/deploy.yml:3: servers[1]: host h1 is listed twice in this role"],
    ),
    (
        "hooks_output bad value",
        "service: app\nimage: a\nservers: [h1]\nhooks_output: loud\n",
        ["config/deploy.yml:4: hooks_output: must be `quiet` or `verbose`"],
    ),
    (
        "ssh port as text",
        "service: app\nimage: a\nservers: [h1]\nssh:\n  port: twenty-two\n",
        ["config/deploy.yml:5: ssh.port: expected an integer, got 'twenty-two'"],
    ),
    (
        "minimum_version too new",
        "service: app\nimage: a\nservers: [h1]\nminimum_version: 99.0.0\n",
        [
            "config/deploy.yml:4: minimum_version: this project needs shipyard 99.0.0 or newer; you have 0.1.0 (upgrade shipyard)"
        ],
    ),
    (
        "top level is a list",
        "- a\n- b\n",
        ["config/deploy.yml:1: (top level): expected a mapping of keys such as `service:`"],
    ),
    (
        "bad yaml",
        "service: app\nimage: [a\n",
        ["config/deploy.yml:3: invalid YAML: did not find expected ',' or ']'"],
    ),
    (
        "erb tags",
        "service: app\nimage: <%= ENV['IMAGE'] %>\nservers: [h1]\n",
        [
            "config/deploy.yml:2: ERB tags (<% %>) are not supported; use jinja2 instead, e.g. {{ env.WEB_HOST }}"
        ],
    ),
    (
        "undefined template variable",
        'service: app\nimage: a\nservers: ["{{ env.NO_SUCH_VAR_HERE }}"]\n',
        [
            "config/deploy.yml:3: template error: environment variable NO_SUCH_VAR_HERE is not set (set it, or use `| default(...)` in the template)"
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in MISTAKES], ids=[n for n, _, _ in MISTAKES]
)
def test_each_mistake_gives_its_exact_error(
    shipyard_project: Project, text: str, expected: list[str]
) -> None:
    assert problems(shipyard_project, text) == expected


def test_there_are_at_least_twenty_distinct_mistakes() -> None:
    assert len({tuple(e) for _, _, e in MISTAKES}) >= 20


def test_every_problem_is_reported_at_once(shipyard_project: Project) -> None:
    found = problems(
        shipyard_project,
        "service: app\nimage: a\nservers:\n  web:\n    hosts: [h1, 5]\n    foo: 1\nboot: {limit: x}\nssh: {port: no}\n",
    )
    assert [p.split(": ")[1] for p in found] == [
        "servers.web.hosts[1]",
        "servers.web.foo",
        "boot.limit",
        "ssh.port",
    ]


def test_require_destination_without_one(shipyard_project: Project) -> None:
    assert problems(
        shipyard_project, "service: app\nimage: a\nservers: [h1]\nrequire_destination: true\n"
    ) == ["config/deploy.yml:4: require_destination: is true, so pass a destination with -d NAME"]


def test_missing_destination_file(shipyard_project: Project) -> None:
    assert problems(
        shipyard_project, "service: app\nimage: a\nservers: [h1]\n", destination="prod"
    ) == ["config/deploy.prod.yml: file not found (create it, or check -d/-c)"]


def test_error_in_destination_file_points_at_it(shipyard_project: Project) -> None:
    shipyard_project.write_config("service: app\nimage: a\nservers: [h1]\n")
    shipyard_project.write_config("\nboot:\n  wait: soon\n", destination="prod")
    with pytest.raises(ConfigError) as raised:
        load_config(shipyard_project.path, destination="prod")
    assert raised.value.problems == [
        "config/deploy.prod.yml:3: boot.wait: expected an integer, got 'soon'"
    ]


def test_missing_config_file_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert raised.value.problems == [
        "config/deploy.yml: file not found (run `shipyard init`, or pass -c PATH)"
    ]


def test_cli_prints_one_line_per_problem_and_exits_1(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        textwrap.dedent(
            """\
            service: app
            image: a
            servers:
              web:
                hosts: [h1, 5]
            boot: {limit: x}
            """
        )
    )
    result = shipyard_project.run("config")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "config/deploy.yml:5: servers.web.hosts[1]: expected a string, got 5",
        'config/deploy.yml:6: boot.limit: must be a number or a percentage such as "25%"',
    ]
    assert "Traceback" not in result.stdout + result.stderr
