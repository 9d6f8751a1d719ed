"""Routing: hosts (exact, wildcard, catch-all), path prefixes, stripping, conflicts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from proxy_harness import Proxy, UpstreamServer

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def test_nothing_deployed_is_404(proxy: Proxy) -> None:
    response = proxy.get("/", host="example.com")
    assert response.status == 404
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    assert "Not Found" in response.text


def test_hostless_service_answers_every_host(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    for host in ("example.com", "anything.test", "10.0.0.1"):
        response = proxy.get("/", host=host)
        assert (response.status, response.text) == (200, "first")


def test_multiple_hosts_and_unknown_host(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, host="1.example.com,2.example.com")
    assert proxy.get("/", host="1.example.com").text == "first"
    assert proxy.get("/", host="2.example.com").text == "first"
    assert proxy.get("/", host="3.example.com").status == 404


def test_host_header_port_is_ignored_for_matching(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, host="dummy.example.com")
    assert proxy.get("/", host="dummy.example.com:80").status == 200
    assert proxy.get("/", host=f"dummy.example.com:{proxy.http_port}").status == 200


def test_host_matching_is_case_sensitive_and_exact(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, host="example.com")
    assert proxy.get("/", host="example.com").status == 200
    assert proxy.get("/", host="www.example.com").status == 404
    assert proxy.get("/", host="example.com.").status == 404


def test_single_label_wildcards_and_fallback(proxy: Proxy, upstream: Upstreams) -> None:
    first, second, fallback = upstream("first"), upstream("second"), upstream("fallback")
    proxy.deploy("one", first.address, host="*.first.example.com")
    proxy.deploy("two", second.address, host="*.second.example.com")
    proxy.deploy("catchall", fallback.address)
    assert proxy.get("/", host="app.first.example.com").text == "first"
    assert proxy.get("/", host="api.second.example.com").text == "second"
    assert proxy.get("/", host="a.b.first.example.com").text == "fallback"  # one label only
    assert proxy.get("/", host="first.example.com").text == "fallback"
    assert proxy.get("/", host="something-else.example.com").text == "fallback"


def test_exact_host_beats_wildcard(proxy: Proxy, upstream: Upstreams) -> None:
    exact, wild = upstream("exact"), upstream("wild")
    proxy.deploy("wild", wild.address, host="*.example.com")
    proxy.deploy("exact", exact.address, host="app.example.com")
    assert proxy.get("/", host="app.example.com").text == "exact"
    assert proxy.get("/", host="api.example.com").text == "wild"


def test_longest_prefix_on_segment_boundaries(proxy: Proxy, upstream: Upstreams) -> None:
    root, api, special = upstream("root"), upstream("api"), upstream("special")
    proxy.deploy("root", root.address, host="example.com")
    proxy.deploy("api", api.address, host="example.com", path_prefix="/api")
    proxy.deploy("special", special.address, host="example.com", path_prefix="/api/special")
    assert proxy.get("/").text == "root"
    assert proxy.get("/random").text == "root"
    assert proxy.get("/apiary").text == "root"
    assert proxy.get("/api").text == "api"
    assert proxy.get("/api/").text == "api"
    assert proxy.get("/api/users").text == "api"
    assert proxy.get("/api/special/x").text == "special"


def test_prefix_is_stripped_by_default(proxy: Proxy, upstream: Upstreams) -> None:
    root, app = upstream("root"), upstream("app")
    proxy.deploy("root", root.address, host="example.com")
    proxy.deploy("app", app.address, host="example.com", path_prefix="/app")
    proxy.get("/app/show?x=1")
    assert app.last().path == "/show?x=1"
    proxy.get("/app")
    assert app.last().path == "/"
    proxy.get("/appointment")
    assert root.last().path == "/appointment"


def test_prefix_kept_with_strip_false(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("app", app.address, path_prefix="/app", strip_path_prefix=False)
    proxy.get("/app/show")
    assert app.last().path == "/app/show"


def test_prefix_is_normalised(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("app", app.address, path_prefix="api/v1/")
    assert proxy.get("/api/v1/items").status == 200
    assert app.last().path == "/items"
    assert "/api/v1" in proxy.cli("list", check=True).stdout


def test_query_string_passes_verbatim(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.get("/test?p1=a;b;c&p2=%x&p3=ok")
    assert app.last().path == "/test?p1=a;b;c&p2=%x&p3=ok"


def test_no_fallback_to_a_less_specific_host(proxy: Proxy, upstream: Upstreams) -> None:
    first, second, fallback = upstream("first"), upstream("second"), upstream("fallback")
    proxy.deploy("first", first.address, host="example.com", path_prefix="/first")
    proxy.deploy("second", second.address, host="example.com", path_prefix="/second")
    proxy.deploy("fallback", fallback.address)
    assert proxy.get("/first").text == "first"
    assert proxy.get("/second/x").text == "second"
    assert proxy.get("/third").status == 404
    assert proxy.get("/").status == 404
    assert proxy.get("/", host="other.com").text == "fallback"


def test_hostless_prefixes_combined_with_hosts(proxy: Proxy, upstream: Upstreams) -> None:
    first, second, third = upstream("first"), upstream("second"), upstream("third")
    proxy.deploy("first", first.address, path_prefix="/first")
    proxy.deploy("second", second.address, path_prefix="/second")
    proxy.deploy("third", third.address, host="third.example.com", path_prefix="/second")
    assert proxy.get("/first").text == "first"
    assert proxy.get("/second").text == "second"
    assert proxy.get("/second/path", host="third.example.com").text == "third"
    assert proxy.get("/").status == 404


def test_conflicting_bindings_are_rejected(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("one", first.address, host="example.com")
    result = proxy.deploy("two", second.address, host="example.com", check=False)
    assert result.returncode == 1
    assert result.stderr == "Error: host settings conflict with another service\n"
    assert proxy.get("/").text == "first"
    # A different prefix on the same host is fine.
    proxy.deploy("two", second.address, host="example.com", path_prefix="/two")
    assert proxy.get("/two").text == "second"


def test_only_one_catch_all_service(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("one", first.address)
    result = proxy.deploy("two", second.address, check=False)
    assert result.stderr == "Error: host settings conflict with another service\n"
    assert proxy.get("/", host="anything.example.com").text == "first"


def test_redeploy_replaces_hosts(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, host="1.example.com,2.example.com")
    proxy.deploy("web", app.address, host="3.example.com,2.example.com")
    assert proxy.get("/", host="1.example.com").status == 404
    assert proxy.get("/", host="2.example.com").status == 200
    assert proxy.get("/", host="3.example.com").status == 200


def test_remove_stops_routing(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    assert proxy.get("/").status == 200
    proxy.cli("remove", "web", check=True)
    assert proxy.get("/").status == 404


def test_invalid_target_pattern(proxy: Proxy) -> None:
    result = proxy.deploy("web", "http://app:80", check=False)
    assert result.returncode == 1
    assert result.stderr == "Error: http://app:80 :invalid host pattern\n"
