"""The control commands (deploy, remove, pause, …) and restoring saved state.

Each mutation that changes routing happens synchronously on the event loop, between two
requests, so a deploy's switch is atomic for every connection: a request either routed to
the old balancer (and finishes there) or routes to the new one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .balancer import LoadBalancer
from .controllers import RolloutController
from .error_pages import ErrorPages, ErrorPagesError
from .godur import SECOND, format_duration
from .options import (
    ServiceOptions,
    TargetOptions,
    service_options_from_json,
    target_options_from_json,
    validate_service_options,
    validate_target,
)
from .service import Service
from .tls import CertificateError, load_certificate

if TYPE_CHECKING:
    import ssl

    from .server import ProxyServer


class CommandError(Exception):
    """Reported to the CLI, which prints ``Error: <message>`` and exits 1."""


def _seconds(ns: int) -> float:
    return ns / SECOND


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CommandError(f"invalid {what}")
    return list(value)


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommandError(f"invalid {what}")
    return value


class Commands:
    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _service(self, name: str) -> Service:
        service = self.proxy.router.services.get(name)
        if service is None:
            raise CommandError("service not found")
        return service

    def _save(self) -> None:
        try:
            self.proxy.state.save(self.proxy.router)
        except OSError as exc:
            self.proxy.logger.error("Failed to save state", error=str(exc))

    async def dispatch(self, method: str, params: dict[str, Any]) -> Any:
        handler = {
            "deploy": self.deploy,
            "remove": self.remove,
            "list": self.list_services,
            "pause": self.pause,
            "stop": self.stop,
            "resume": self.resume,
            "rollout_deploy": self.rollout_deploy,
            "rollout_set": self.rollout_set,
            "rollout_stop": self.rollout_stop,
        }.get(method)
        if handler is None:
            raise CommandError(f"unknown method {method}")
        name = params.get("name", "")
        self.proxy.logger.debug("Command received", method=method, service=name)
        if method == "list":
            return await handler(params)
        if not isinstance(name, str):
            raise CommandError("invalid service name")
        async with self._lock(name):
            return await handler(params)

    # --- building blocks ----------------------------------------------------------------

    def _prepare(
        self, options: ServiceOptions, targets: list[str], readers: list[str]
    ) -> tuple[ServiceOptions, ErrorPages, ssl.SSLContext | None]:
        """Validate and load everything that could fail, before touching any state."""
        problem = validate_service_options(options)
        if problem:
            raise CommandError(problem)
        for target in targets + readers:
            bad = validate_target(target)
            if bad:
                raise CommandError(bad)
        options = options.normalised()
        if options.uses_automatic_tls() and any("*" in h for h in options.hosts):
            raise CommandError("automatic TLS does not support wildcards")
        pages = self.proxy.error_pages
        if options.error_page_path:
            try:
                pages = ErrorPages.load_directory(options.error_page_path, self.proxy.error_pages)
            except ErrorPagesError as exc:
                raise CommandError(str(exc)) from None
        context = None
        if options.tls_enabled and options.tls_certificate_path:
            try:
                context = load_certificate(
                    options.tls_certificate_path, options.tls_private_key_path
                )
            except CertificateError as exc:
                raise CommandError(str(exc)) from None
        return options, pages, context

    def _new_balancer(
        self, targets: list[str], readers: list[str], options: TargetOptions
    ) -> LoadBalancer:
        return LoadBalancer(targets, readers, options.health_check_config, self.proxy.logger)

    async def _become_healthy(self, balancer: LoadBalancer, timeout_ns: int, force: bool) -> None:
        balancer.start_health_checks()
        if force:
            return
        if not await balancer.wait_until_healthy(_seconds(timeout_ns)):
            balancer.dispose()
            raise CommandError(
                f"target failed to become healthy within configured timeout ({format_duration(timeout_ns)})"
            )

    # --- commands -----------------------------------------------------------------------

    async def deploy(self, params: dict[str, Any]) -> bool:
        proxy = self.proxy
        name = params["name"]
        targets = _strings(params.get("targets", []), "targets")
        readers = _strings(params.get("readers", []), "readers")
        deploy_timeout = _int(params.get("deploy_timeout", 30 * SECOND), "deploy timeout")
        drain_timeout = _int(params.get("drain_timeout", 30 * SECOND), "drain timeout")
        try:
            raw_options = service_options_from_json(params.get("service_options", {}))
            target_options = target_options_from_json(params.get("target_options", {}))
        except (TypeError, ValueError) as exc:
            raise CommandError(f"invalid options: {exc}") from None
        if not targets:
            raise CommandError('required flag(s) "target" not set')
        options, pages, context = self._prepare(raw_options, targets, readers)
        if proxy.router.conflicts(name, options.hosts, options.path_prefixes):
            raise CommandError("host settings conflict with another service")
        proxy.logger.info(
            "Deploying",
            service=name,
            hosts=options.hosts,
            paths=options.path_prefixes,
            targets=targets,
            read_targets=readers,
            tls=options.tls_enabled,
        )
        balancer = self._new_balancer(targets, readers, target_options)
        await self._become_healthy(balancer, deploy_timeout, bool(params.get("force", False)))

        # The switch: synchronous, so no request sees a half-installed service.
        if proxy.router.conflicts(name, options.hosts, options.path_prefixes):
            balancer.dispose()
            self._save()
            raise CommandError("host settings conflict with another service")
        service = proxy.router.services.get(name)
        replaced: LoadBalancer | None = None
        if service is None:
            service = Service(name, options, target_options, pages, context)
        else:
            service.apply_options(options, target_options, pages, context)
            replaced = service.active
        service.active = balancer
        proxy.router.install(service)
        self._save()
        proxy.logger.info(
            "Deployed",
            service=name,
            hosts=options.hosts,
            paths=options.path_prefixes,
            targets=targets,
        )
        if replaced is not None:
            await replaced.drain(_seconds(drain_timeout))
        return True

    async def remove(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            self.proxy.router.remove(service.name)
            for balancer in service.all_balancers():
                balancer.dispose()
            self.proxy.logger.info("Removed", service=service.name)
        finally:
            self._save()
        return True

    async def list_services(self, params: dict[str, Any]) -> dict[str, Any]:
        services = self.proxy.router.services
        return {"targets": {name: services[name].describe() for name in sorted(services)}}

    async def _drain_service(self, service: Service, drain_timeout: int) -> None:
        await asyncio.gather(
            *(lb.drain(_seconds(drain_timeout), retire=False) for lb in service.all_balancers())
        )
        self.proxy.logger.info("Service drained", service=service.name)

    async def pause(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            service.pause.pause(_int(params.get("pause_timeout", 30 * SECOND), "max pause"))
            self.proxy.logger.info("Service paused", service=service.name)
            await self._drain_service(
                service, _int(params.get("drain_timeout", 30 * SECOND), "drain timeout")
            )
        finally:
            self._save()
        return True

    async def stop(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            message = params.get("message", "")
            service.pause.stop(message if isinstance(message, str) else "")
            self.proxy.logger.info("Service stopped", service=service.name)
            await self._drain_service(
                service, _int(params.get("drain_timeout", 30 * SECOND), "drain timeout")
            )
        finally:
            self._save()
        return True

    async def resume(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            service.pause.resume()
            self.proxy.logger.info("Service resumed", service=service.name)
        finally:
            self._save()
        return True

    async def rollout_deploy(self, params: dict[str, Any]) -> bool:
        service = self._service(params["name"])
        targets = _strings(params.get("targets", []), "targets")
        readers = _strings(params.get("readers", []), "readers")
        for target in targets + readers:
            bad = validate_target(target)
            if bad:
                raise CommandError(bad)
        deploy_timeout = _int(params.get("deploy_timeout", 30 * SECOND), "deploy timeout")
        drain_timeout = _int(params.get("drain_timeout", 30 * SECOND), "drain timeout")
        self.proxy.logger.info("Deploying for rollout", service=service.name, targets=targets)
        balancer = self._new_balancer(targets, readers, service.target_options)
        await self._become_healthy(balancer, deploy_timeout, False)
        if self.proxy.router.services.get(service.name) is not service:
            balancer.dispose()
            raise CommandError("service not found")
        replaced, service.rollout = service.rollout, balancer
        self._save()
        self.proxy.logger.info("Deployed for rollout", service=service.name, targets=targets)
        if replaced is not None:
            await replaced.drain(_seconds(drain_timeout))
        return True

    async def rollout_set(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            if service.rollout is None:
                raise CommandError("rollout target not set")
            percent = _int(params.get("percent", 0), "percent")
            allowlist = _strings(params.get("allowlist", []), "list")
            service.rollout_controller = RolloutController(percent, allowlist)
            self.proxy.logger.info(
                "Set rollout split", service=service.name, percent=percent, allowlist=allowlist
            )
        finally:
            self._save()
        return True

    async def rollout_stop(self, params: dict[str, Any]) -> bool:
        try:
            service = self._service(params["name"])
            service.rollout_controller = None
            self.proxy.logger.info("Stopped rollout", service=service.name)
        finally:
            self._save()
        return True

    # --- restoring state ----------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild every service from the state file; bad entries are skipped, never fatal."""
        proxy = self.proxy
        logger = proxy.logger
        try:
            saved = proxy.state.load()
        except ValueError as exc:
            logger.error("Failed to decode saved state", path=proxy.state.path, error=str(exc))
            return
        if saved is None:
            logger.info("No previous state to restore", path=proxy.state.path)
            return
        restored: list[str] = []
        failed = 0
        for index, entry in enumerate(saved):
            try:
                service = self._restore_service(entry)
            except (CommandError, ValueError, TypeError, KeyError) as exc:
                failed += 1
                name = entry.get("name") if isinstance(entry, dict) else None
                logger.error("Failed to restore service", index=index, service=name, error=str(exc))
                continue
            restored.append(service.name)
        if failed:
            logger.warn("Restored saved state partially", services=restored, failed=failed)
        else:
            logger.info("Restored saved state", services=restored)

    def _restore_service(self, entry: Any) -> Service:
        if not isinstance(entry, dict):
            raise ValueError("service entry is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("service entry has no name")
        options_json = dict(entry.get("options") or {})
        for legacy in ("hosts", "path_prefixes"):
            if legacy in entry and legacy not in options_json:
                options_json[legacy] = entry[legacy]
        raw_options = service_options_from_json(options_json)
        target_options = target_options_from_json(entry.get("target_options") or {})
        targets = entry.get("active_targets")
        if targets is None and isinstance(entry.get("active_target"), str):
            targets = [entry["active_target"]]
        targets = _strings(targets or [], "active_targets")
        readers = _strings(entry.get("active_readers") or [], "active_readers")
        if not targets:
            raise ValueError("service has no targets")
        options, pages, context = self._prepare(raw_options, targets, readers)
        if self.proxy.router.conflicts(name, options.hosts, options.path_prefixes):
            raise CommandError("host settings conflict with another service")
        service = Service(name, options, target_options, pages, context)
        service.active = self._restored_balancer(targets, readers, target_options)
        rollout_targets = entry.get("rollout_targets")
        if rollout_targets is None and isinstance(entry.get("rollout_target"), str):
            rollout_targets = [entry["rollout_target"]]
        if rollout_targets:
            service.rollout = self._restored_balancer(
                _strings(rollout_targets, "rollout_targets"),
                _strings(entry.get("rollout_readers") or [], "rollout_readers"),
                target_options,
            )
        service.pause.load_json(entry.get("pause_controller"))
        service.rollout_controller = RolloutController.from_json(entry.get("rollout_controller"))
        self.proxy.router.install(service)
        return service

    def _restored_balancer(
        self, targets: list[str], readers: list[str], options: TargetOptions
    ) -> LoadBalancer:
        balancer = self._new_balancer(targets, readers, options)
        balancer.mark_all_healthy()
        if len(balancer.targets) > 1:
            balancer.start_health_checks()
        return balancer
