"""The routing table: (host, path prefix) → service, rebuilt atomically on every change.

Lookup order follows kamal-proxy: an exact host, else the single-label wildcard
``*.rest.of.host``, else the catch-all host ``""``; the host is chosen once, with no fallback
to a less specific host when its paths don't match.  Within the host the longest prefix on
a segment boundary wins.

Requests resolve their Host header through ``host_cache`` (raw header bytes → host name
and that host's bindings), which is replaced whenever the table is rebuilt, so the hot
path decodes, strips the port and looks up each distinct Host value once per deploy.
"""

from __future__ import annotations

from .service import Service

Binding = tuple[str, str, Service]  # (prefix, prefix + "/", service)
HostEntry = tuple[str, "list[Binding] | None"]  # (host without port, its bindings)

HOST_CACHE_LIMIT = 1024


def request_host(raw: str) -> str:
    """The Host header without ``:port`` (IPv6 brackets removed, like net.SplitHostPort)."""
    if raw.startswith("["):
        end = raw.find("]")
        if end != -1:
            return raw[1:end]
        return raw
    colon = raw.rfind(":")
    if colon != -1 and raw.count(":") == 1:
        return raw[:colon]
    return raw


def prefix_matches(prefix: str, path: str) -> bool:
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/") or (path + "/").startswith(prefix + "/")


class Router:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self._hosts: dict[str, list[Binding]] = {}
        self.host_cache: dict[bytes, HostEntry] = {}
        self.default_tls_host = ""

    def resolve_host(self, host_raw: bytes) -> HostEntry:
        """The host name of a Host header and its bindings, remembered in ``host_cache``."""
        host = host_raw.decode("latin-1")
        if b":" in host_raw:
            host = request_host(host)
        entry = (host, self._bindings_for_host(host))
        cache = self.host_cache
        if len(cache) >= HOST_CACHE_LIMIT:
            cache.clear()  # clients choose Host values: keep the cache bounded
        cache[host_raw] = entry
        return entry

    def _bindings_for_host(self, host: str) -> list[Binding] | None:
        hosts = self._hosts
        bindings = hosts.get(host)
        if bindings is not None:
            return bindings
        dot = host.find(".")
        if dot != -1:
            bindings = hosts.get("*" + host[dot:])
            if bindings is not None:
                return bindings
        return hosts.get("")

    def root_service_for_host(self, host: str) -> Service | None:
        """The service at ``/`` for a host (used for SNI and TLS inheritance)."""
        bindings = self._bindings_for_host(host)
        if not bindings:
            return None
        for prefix, _, service in bindings:
            if prefix == "/":
                return service
        return None

    def conflicts(self, name: str, hosts: list[str], prefixes: list[str]) -> bool:
        wanted = {(h, p) for h in (hosts or [""]) for p in (prefixes or ["/"])}
        for other in self.services.values():
            if other.name == name:
                continue
            other_pairs = {
                (h, p) for h in (other.options.hosts or [""]) for p in other.options.path_prefixes
            }
            if wanted & other_pairs:
                return True
        return False

    def install(self, service: Service) -> None:
        self.services[service.name] = service
        self.rebuild()

    def remove(self, name: str) -> Service | None:
        service = self.services.pop(name, None)
        self.rebuild()
        return service

    def rebuild(self) -> None:
        table: dict[str, list[Binding]] = {}
        for service in self.services.values():
            for host in service.options.hosts or [""]:
                for prefix in service.options.path_prefixes:
                    table.setdefault(host, []).append((prefix, prefix + "/", service))
        for bindings in table.values():
            bindings.sort(key=lambda binding: len(binding[0]), reverse=True)
        self._hosts = table
        self.host_cache = {}
        self._sync_tls_settings()

    def _sync_tls_settings(self) -> None:
        for service in self.services.values():
            if service.is_root:
                service.tls_enabled = service.options.tls_enabled
                service.tls_redirect = service.options.tls_redirect
                if (
                    service.tls_enabled
                    and service.options.has_configured_hosts()
                    and (not self.default_tls_host or self.default_tls_host not in self._hosts)
                ):
                    self.default_tls_host = service.options.hosts[0]
                continue
            first_host = (service.options.hosts or [""])[0]
            bindings = self._hosts.get(first_host, [])
            root = next((s for p, _, s in bindings if p == "/"), None)
            service.tls_enabled = root.options.tls_enabled if root else False
            service.tls_redirect = root.options.tls_redirect if root else True
