"""A deployed service: its options, its active and rollout targets, pause and rollout state."""

from __future__ import annotations

import ssl
from typing import Any

from .balancer import LoadBalancer
from .controllers import STATE_NAMES, PauseController, RolloutController
from .error_pages import ErrorPages
from .logs import escape
from .metrics import ServiceStats
from .options import (
    ServiceOptions,
    TargetOptions,
    service_options_to_json,
    target_options_to_json,
)


def log_header_key(prefix: str, name: str) -> str:
    return prefix + name.lower().replace("-", "_")


class Service:
    def __init__(
        self,
        name: str,
        options: ServiceOptions,
        target_options: TargetOptions,
        error_pages: ErrorPages,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.name = name
        self.name_json = escape(name)
        self.pause = PauseController()
        self.active: LoadBalancer | None = None
        self.rollout: LoadBalancer | None = None
        self.rollout_controller: RolloutController | None = None
        # Effective TLS settings; path-prefix services inherit them from their host's root.
        self.tls_enabled = False
        self.tls_redirect = True
        # This name's metrics, bound by the first request counted (see Exchange.start).
        self.stats: ServiceStats | None = None
        self.apply_options(options, target_options, error_pages, ssl_context)

    def apply_options(
        self,
        options: ServiceOptions,
        target_options: TargetOptions,
        error_pages: ErrorPages,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        """Replace every option at once (kamal-proxy redeploys never merge)."""
        self.options = options
        self.target_options = target_options
        self.error_pages = error_pages
        self.ssl_context = ssl_context
        self.tls_enabled = options.tls_enabled
        self.tls_redirect = options.tls_redirect
        health_path = target_options.health_check_config.path or "/"
        self.health_path = health_path if health_path.startswith("/") else "/" + health_path
        self.excluded_metric_paths = frozenset(options.exclude_metrics_paths)
        self.request_log_headers = [
            (h.lower().encode("latin-1"), log_header_key("req_", h))
            for h in target_options.log_request_headers
        ]
        self.response_log_headers = [
            (h.lower().encode("latin-1"), log_header_key("resp_", h))
            for h in target_options.log_response_headers
        ]
        self.log_headers = bool(self.request_log_headers or self.response_log_headers)
        self.client_ip_header = options.client_ip_header.lower().encode("latin-1")
        self.target_timeout = target_options.response_timeout / 1e9
        self.is_root = "/" in options.path_prefixes
        # Flattened for the request path (one attribute load each).
        self.target_timeout_ns = target_options.response_timeout
        self.canonical_host = options.canonical_host
        self.forward_headers = target_options.forward_headers
        self.buffer_requests = target_options.buffer_requests
        self.buffer_responses = target_options.buffer_responses

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.pause.state]

    def all_balancers(self) -> list[LoadBalancer]:
        return [lb for lb in (self.active, self.rollout) if lb is not None]

    def describe(self) -> dict[str, Any]:
        """The row of ``list``."""
        hosts = [h for h in self.options.hosts if h]
        targets = self.active.addresses() if self.active is not None else []
        return {
            "host": ",".join(hosts) if hosts else "*",
            "path": ",".join(self.options.path_prefixes),
            "tls": self.tls_enabled,
            "target": ",".join(targets),
            "state": self.state_name,
        }

    def to_json(self) -> dict[str, Any]:
        active = self.active
        rollout = self.rollout
        return {
            "name": self.name,
            "options": service_options_to_json(self.options),
            "target_options": target_options_to_json(self.target_options),
            "active_targets": [t.address for t in active.writers] if active else [],
            "active_readers": [t.address for t in active.readers] if active else [],
            "rollout_targets": [t.address for t in rollout.writers] if rollout else None,
            "rollout_readers": [t.address for t in rollout.readers] if rollout else None,
            "pause_controller": self.pause.to_json(),
            "rollout_controller": (
                self.rollout_controller.to_json() if self.rollout_controller else None
            ),
        }
