"""Plugin loading: built-ins, installed entry points and the project's ``hooks.py``, all
through the same ``register`` call, plus the typed façade the core calls hooks through.

Registration order, and so who has the final say (pluggy calls the last registered
first, and for a step hook the first non-None answer wins):

1. built-ins from ``shipyard.plugins`` (``BUILTIN_PLUGINS``);
2. installed plugins, entry-point group ``shipyard`` (unless
   ``SHIPYARD_DISABLE_PLUGIN_AUTOLOAD=1``);
3. the project's ``.shipyard/hooks.py``, last, so it has the final say.

Any of them can be switched off by name: ``--no-plugin NAME`` or
``SHIPYARD_DISABLE_PLUGINS=a,b``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from shipyard.core import __version__, hookspecs
from shipyard.core.entrypoints import ENTRYPOINT_GROUP, PROJECT_HOOKS_FILE
from shipyard.core.errors import HookAbort, PluginError, ShipyardError
from shipyard.core.hookspecs import PROJECT, shell_hook_name

if TYPE_CHECKING:
    import click

    from shipyard.core.context import Context
    from shipyard.core.output import Output
    from shipyard.core.records import (
        AuditEvent,
        BootResult,
        BuildResult,
        CommandOutcome,
        PruneResult,
        PushResult,
    )
    from shipyard.core.secrets import SecretsAdapter
    from shipyard.core.transport import Transport

#: Built-in plugins, one module each in ``shipyard.plugins``, registered in this order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "shell_hooks",
    "ssh",
    "local",
    "audit",
    "docker_build",
    "rolling_boot",
    "app_boot",
    "proxy",
    "prune",
    "secrets_adapters",
    "ci_check",
    "broadcast",
)
PROJECT_HOOKS_NAME = "project"

#: Called with every new manager; the plugin test kit records hook calls this way.
manager_observers: list[Callable[[ShipyardPluginManager], None]] = []


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # builtin | entry point | local file | shell
    version: str | None
    hooks: tuple[str, ...]
    distribution: str | None = None
    location: str | None = None


class ShipyardPluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str, str | None, str | None, str | None]] = {}
        self.hooks = Hooks(self)
        self.warnings: list[str] = []
        for observe in manager_observers:
            observe(self)

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        # A plain `def shipyard_pre_deploy(ctx)` in hooks.py works without the decorator.
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(f"{PROJECT}_") and callable(getattr(plugin, name, None)):
            return {
                "wrapper": False,
                "hookwrapper": False,
                "optionalhook": False,
                "tryfirst": False,
                "trylast": False,
                "specname": None,
            }
        return opts

    # -- loading ------------------------------------------------------------------------

    def load(self, *, project_dir: Path, disabled: Iterable[str] = (), autoload: bool | None = None,
             project_hooks: bool = True) -> None:
        """Register every enabled plugin. ``disabled`` names are blocked first."""
        blocked = {n.strip() for n in [*disabled, *os.environ.get("SHIPYARD_DISABLE_PLUGINS", "").split(",")] if n.strip()}
        for name in blocked:
            self.set_blocked(name)
        for name in BUILTIN_PLUGINS:
            if not self.is_blocked(name):
                module = importlib.import_module(f"shipyard.plugins.{name}")
                self.add(module, name, source="builtin", version=__version__)
        if autoload is None:
            autoload = os.environ.get("SHIPYARD_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
        if autoload:
            self._load_entry_points()
        if project_hooks:
            self._load_project_hooks(project_dir)
        known = set(BUILTIN_PLUGINS) | set(self._sources) | {PROJECT_HOOKS_NAME}
        for name in sorted(blocked - known):
            self.warnings.append(f"--no-plugin {name}: no plugin has that name (see `shipyard plugins`)")

    def add(self, plugin: object, name: str, *, source: str, version: str | None = None,
            distribution: str | None = None, location: str | None = None) -> None:
        """Register ``plugin`` under ``name``, the one path every plugin takes."""
        try:
            self.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as error:
            where = f" ({distribution})" if distribution else ""
            raise PluginError(f"plugin '{name}'{where} cannot be registered: {error}") from error
        self._sources[name] = (source, version, distribution, location)
        self._check_hook_names(plugin, name, source)

    def _check_hook_names(self, plugin: object, name: str, source: str) -> None:
        for attribute in dir(plugin):
            caller = getattr(self.hook, attribute, None) if attribute.startswith(f"{PROJECT}_") else None
            if caller is not None and caller.spec is None:
                problem = f"unknown hook {attribute} (misspelt? `shipyard docs hooks` lists them)"
                if source == "local file":
                    self.warnings.append(f"{PROJECT_HOOKS_FILE}: {problem}; it will never be called")
                else:
                    self.unregister(name=name)
                    raise PluginError(f"plugin '{name}': {problem}")

    def _load_entry_points(self) -> None:
        from shipyard.core.entrypoints import entry_points

        for entry_point in entry_points(ENTRYPOINT_GROUP):
            if self.is_blocked(entry_point.name) or self.has_plugin(entry_point.name):
                continue
            dist_label = f"{entry_point.distribution} {entry_point.version}"
            try:
                plugin = entry_point.load()
            except Exception as error:
                raise PluginError(
                    f"installed plugin '{entry_point.name}' (from {dist_label}) failed to load: "
                    f"{type(error).__name__}: {error}. Disable it with --no-plugin {entry_point.name} "
                    f"or SHIPYARD_DISABLE_PLUGINS={entry_point.name}"
                ) from error
            self.add(plugin, entry_point.name, source="entry point", version=entry_point.version,
                     distribution=entry_point.distribution)

    def _load_project_hooks(self, project_dir: Path) -> None:
        path = project_dir / PROJECT_HOOKS_FILE
        if self.is_blocked(PROJECT_HOOKS_NAME) or not path.is_file():
            return
        self.add(load_hooks_file(path, PROJECT_HOOKS_FILE), PROJECT_HOOKS_NAME, source="local file",
                 location=PROJECT_HOOKS_FILE)

    # -- introspection ------------------------------------------------------------------

    def infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            source, version, distribution, location = self._sources.get(name, ("registered", None, None, None))
            hooks = tuple(sorted(c.name.removeprefix(f"{PROJECT}_") for c in self.get_hookcallers(plugin) or []))
            infos.append(PluginInfo(name, source, version, hooks, distribution, location))
        order = {"builtin": 0, "entry point": 1, "local file": 2}
        return sorted(infos, key=lambda i: (order.get(i.source, 3), i.name))

    def plugin_for_error(self, error: BaseException) -> str | None:
        """The plugin whose hook implementation raised ``error`` (innermost wins)."""
        codes: dict[object, str] = {}
        for name, plugin in self.list_name_plugin():
            for caller in self.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        codes[getattr(impl.function, "__code__", None)] = name
        found = None
        for frame, _ in traceback.walk_tb(error.__traceback__):
            found = codes.get(frame.f_code, found)
        return found

    # -- tracing ------------------------------------------------------------------------

    def enable_trace(self, output: Output) -> None:
        """``--trace``: print every hook call, its arguments and its result on stderr."""
        import threading

        def where() -> str:
            thread = threading.current_thread()
            return "" if thread is threading.main_thread() else f" [{thread.name}]"

        def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
            args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
            names = ", ".join(impl.plugin_name for impl in reversed(impls)) or "no implementations"
            output.err.write(output.scrub(f"[trace]{where()} {hook_name}({args}) -> {names}\n"))

        def after(
            outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
        ) -> None:
            if outcome.exception is not None:
                shown = f"raised {type(outcome.exception).__name__}: {outcome.exception}"
            else:
                shown = f"returned {_short(outcome.get_result())}"
            output.err.write(output.scrub(f"[trace]{where()} {hook_name} {shown}\n"))

        self.add_hookcall_monitoring(before, after)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def load_hooks_file(path: Path, display: str) -> ModuleType:
    """Import a project hooks file; errors name the file and line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shipyard_project_hooks", path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{display}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise PluginError(f"{display}:{error.lineno}: SyntaxError: {error.msg}") from error
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
        line = f":{frames[-1].lineno}" if frames else ""
        raise PluginError(f"{display}{line}: {type(error).__name__}: {error}") from error
    sys.modules.setdefault(spec.name, module)
    return module


class Hooks:
    """Typed calls into the lifecycle, with errors attributed to the plugin that raised.

    The core never touches ``pm.hook`` directly; it calls these methods.
    """

    def __init__(self, pm: ShipyardPluginManager) -> None:
        self._pm = pm

    def _call(self, hook: str, **kwargs: Any) -> Any:
        name = hook
        caller = getattr(self._pm.hook, f"{PROJECT}_{name}")
        try:
            return caller(**kwargs)
        except ShipyardError as error:
            if isinstance(error, HookAbort) and not getattr(error, "attributed", False):
                raise self._abort(name, str(error), self._pm.plugin_for_error(error)) from error
            raise
        except Exception as error:
            plugin = self._pm.plugin_for_error(error) or "unknown"
            raise PluginError(
                f"plugin '{plugin}' failed in hook `{shell_hook_name(name)}`: {type(error).__name__}: {error}"
            ) from error

    @staticmethod
    def _abort(hook: str, reason: str, plugin: str | None) -> HookAbort:
        by = f" in plugin '{plugin}'" if plugin else ""
        abort = HookAbort(f"Hook `{shell_hook_name(hook)}`{by} aborted: {reason}")
        abort.attributed = True  # type: ignore[attr-defined]
        return abort

    # setup ------------------------------------------------------------------------------
    def commands(self, cli: click.Group) -> None:
        self._call("commands", cli=cli)

    def configure(self, ctx: Context) -> None:
        self._call("configure", ctx=ctx)

    def unconfigure(self, ctx: Context) -> None:
        self._call("unconfigure", ctx=ctx)

    def pre_command(self, ctx: Context) -> None:
        self._call("pre_command", ctx=ctx)

    def post_command(self, ctx: Context, outcome: CommandOutcome) -> None:
        self._call("post_command", ctx=ctx, outcome=outcome)

    # connect ----------------------------------------------------------------------------
    def pre_connect(self, ctx: Context) -> None:
        self._call("pre_connect", ctx=ctx)

    def transport(self, ctx: Context, host: str) -> Transport:
        transport: Transport | None = self._call("transport", ctx=ctx, host=host)
        if transport is None:
            raise PluginError(f"no plugin provides a transport for host {host} (is the ssh plugin disabled?)")
        return transport

    # build ------------------------------------------------------------------------------
    def pre_build(self, ctx: Context) -> None:
        self._call("pre_build", ctx=ctx)

    def build(self, ctx: Context) -> BuildResult:
        result: BuildResult | None = self._call("build", ctx=ctx)
        if result is None:
            raise PluginError("no plugin builds images (is the docker_build plugin disabled?)")
        return result

    def push(self, ctx: Context, build: BuildResult) -> PushResult:
        result: PushResult | None = self._call("push", ctx=ctx, build=build)
        if result is None:
            raise PluginError("no plugin pushes images (is the docker_build plugin disabled?)")
        return result

    def post_push(self, ctx: Context, push: PushResult) -> None:
        self._call("post_push", ctx=ctx, push=push)

    # deploy -----------------------------------------------------------------------------
    def pre_deploy(self, ctx: Context) -> None:
        """Run every pre-deploy implementation in call order until one vetoes."""
        from shipyard.core.records import Veto

        caller = self._pm.hook.shipyard_pre_deploy
        for impl in reversed(caller.get_hookimpls()):
            others = [p for p in self._pm.get_plugins() if p is not impl.plugin]
            single = self._pm.subset_hook_caller("shipyard_pre_deploy", remove_plugins=others)
            try:
                results = single(ctx=ctx)
            except HookAbort as error:
                raise self._abort("pre_deploy", str(error), impl.plugin_name) from error
            except ShipyardError:
                raise
            except Exception as error:
                raise PluginError(
                    f"plugin '{impl.plugin_name}' failed in hook `pre-deploy`: {type(error).__name__}: {error}"
                ) from error
            for result in results:
                if isinstance(result, Veto):
                    raise self._abort("pre_deploy", result.reason, impl.plugin_name)

    def boot_plan(self, ctx: Context, hosts: list[str]) -> list[list[str]]:
        plan: list[list[str]] | None = self._call("boot_plan", ctx=ctx, hosts=hosts)
        return plan if plan is not None else [hosts]

    def pre_app_boot(self, ctx: Context, hosts: list[str]) -> None:
        self._call("pre_app_boot", ctx=ctx, hosts=hosts)

    def post_app_boot(self, ctx: Context, hosts: list[str]) -> None:
        self._call("post_app_boot", ctx=ctx, hosts=hosts)

    def boot_container(self, ctx: Context, host: str, role: str) -> BootResult:
        result: BootResult | None = self._call("boot_container", ctx=ctx, host=host, role=role)
        if result is None:
            raise PluginError("no plugin boots containers (is the app_boot plugin disabled?)")
        return result

    def switch_traffic(self, ctx: Context, host: str, role: str, boot: BootResult) -> bool:
        return bool(self._call("switch_traffic", ctx=ctx, host=host, role=role, boot=boot))

    def prune(self, ctx: Context, host: str) -> PruneResult | None:
        result: PruneResult | None = self._call("prune", ctx=ctx, host=host)
        return result

    def post_deploy(self, ctx: Context, runtime: float) -> None:
        self._call("post_deploy", ctx=ctx, runtime=runtime)

    def deploy_failed(self, ctx: Context, error: BaseException) -> None:
        self._call("deploy_failed", ctx=ctx, error=error)

    # proxy and servers ------------------------------------------------------------------
    def pre_proxy_reboot(self, ctx: Context, hosts: list[str]) -> None:
        self._call("pre_proxy_reboot", ctx=ctx, hosts=hosts)

    def post_proxy_reboot(self, ctx: Context, hosts: list[str]) -> None:
        self._call("post_proxy_reboot", ctx=ctx, hosts=hosts)

    def docker_setup(self, ctx: Context) -> None:
        self._call("docker_setup", ctx=ctx)

    # audit and secrets ------------------------------------------------------------------
    def audit(self, ctx: Context, event: AuditEvent) -> None:
        """Audit failures are warnings: a full disk must not fail a deploy half-way."""
        try:
            self._call("audit", ctx=ctx, event=event)
        except ShipyardError as error:
            ctx.output.warn(f"audit: {error}")

    def secrets_adapter(self, name: str) -> SecretsAdapter:
        adapter: SecretsAdapter | None = self._call("secrets_adapter", name=name)
        if adapter is None:
            raise ShipyardError(f"unknown secrets adapter '{name}' (see `shipyard plugins` for what is installed)")
        return adapter
