"""The plugin manager: loads built-in and installed plugins one by one and builds the registry."""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import pluggy

from lmforge.errors import PluginError
from lmforge.host import hookspecs
from lmforge.host.registry import KINDS, Provider, Registry

GROUP = "lmforge"

BUILTIN_DISTRIBUTION = "lmforge"  # entry points of this distribution are the built-ins


@dataclass(frozen=True)
class PluginInfo:
    """A plugin that loaded."""

    name: str
    distribution: str
    version: str
    builtin: bool
    module: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that did not load; the rest of lmforge works without it."""

    name: str
    distribution: str
    version: str
    entry_point: str
    stage: str  # "import", "hooks" or a registration hook name
    error: str
    traceback: str

    def describe(self) -> str:
        return (f"plugin {self.name!r} ({self.distribution} {self.version}, entry point "
                f"{self.entry_point}) failed at {self.stage}: {self.error}")


@dataclass
class PluginHost:
    """The loaded plugins, their failures and the registry they filled."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    _warned: bool = False

    def warn_failures(self, stream=None) -> None:
        """Print each failure once per process, on stderr."""
        if self._warned or not self.failures:
            return
        self._warned = True
        stream = stream or sys.stderr
        for failure in self.failures:
            print(f"lmforge: warning: {failure.describe()}", file=stream)
        print("lmforge: the other plugins loaded; set LMFORGE_STRICT_PLUGINS=1 to make this "
              "fatal and show the traceback, or LMFORGE_DISABLE_PLUGINS=NAME to silence it",
              file=stream)


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


class _Loader:
    """Loads plugins into one manager, recording failures instead of raising them."""

    def __init__(self, environ: Mapping[str, str]):
        self.only = _names(environ.get("LMFORGE_LOAD_PLUGINS"))
        self.disabled = _names(environ.get("LMFORGE_DISABLE_PLUGINS")) or set()
        self.strict = _truthy(environ.get("LMFORGE_STRICT_PLUGINS"))
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []

    def fail(self, info: PluginInfo, entry_point: str, stage: str, exc: BaseException) -> None:
        self.failures.append(PluginFailure(
            name=info.name, distribution=info.distribution, version=info.version,
            entry_point=entry_point, stage=stage, error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc))))
        if self.manager.get_plugin(info.name) is not None:
            self.manager.unregister(name=info.name)
        self.plugins.pop(info.name, None)
        self.registry.remove_plugin(info.name)

    def add(self, info: PluginInfo, entry_point: str, load) -> None:
        if {info.name, info.distribution} & self.disabled:
            self.manager.set_blocked(info.name)
            return
        try:
            module = load()
        except Exception as exc:  # a broken plugin must not take lmforge down
            self.fail(info, entry_point, "import", exc)
            return
        try:
            self.manager.register(module, name=info.name)
            self._check_hooks(info.name, module)
        except Exception as exc:
            self.fail(info, entry_point, "hooks", exc)
            return
        self.plugins[info.name] = info

    def _check_hooks(self, name: str, module) -> None:
        hooks = self.manager.hook
        known = sorted(n for n in dir(hooks) if not n.startswith("_")
                       and getattr(hooks, n).has_spec())
        for caller in self.manager.get_hookcallers(module) or []:
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PluginError(f"plugin {name!r} implements {caller.name!r}, which is not an "
                                  f"lmforge hook{hint} Known hooks: {', '.join(known)}")

    def load_entry_points(self) -> None:
        """Every `lmforge` entry point: the built-ins (lmforge's own) first, then the installed
        plugins the switches allow."""
        found = [(_info_from_entry_point(ep), ep) for ep in entry_points(group=GROUP)]
        builtins = [(info, ep) for info, ep in found if info.builtin]
        if not builtins:
            raise PluginError(
                f"lmforge's package metadata declares no {GROUP!r} entry points, so its built-in "
                f"plugins cannot load: install lmforge (`make install`, or `pip install "
                f"--no-build-isolation -e .` in the source tree) rather than running it from an "
                f"uninstalled tree")
        for info, ep in builtins + [pair for pair in found if not pair[0].builtin]:
            if self.manager.has_plugin(info.name):
                continue
            if (not info.builtin and self.only is not None
                    and not ({info.name, info.distribution} & self.only)):
                continue
            self.add(info, f"{ep.name} = {ep.value}", ep.load)

    def register_components(self) -> None:
        for kind, hook_name in KINDS.items():
            for impl in list(getattr(self.manager.hook, hook_name).get_hookimpls()):
                info = self.plugins.get(impl.plugin_name)
                if info is None:
                    continue
                provider = Provider(info.name, info.distribution, info.version, info.builtin)

                def register(name, component, *, settings=None, _kind=kind, _p=provider):
                    self.registry.add(_kind, name, component, settings, _p)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self.fail(info, info.module, hook_name, exc)

    def add_commands(self, cli) -> None:
        """Let each loaded plugin add its subcommands to `cli`; a failure is recorded like any
        other, and the commands a failed plugin added are taken back out."""
        for impl in list(self.manager.hook.register_commands.get_hookimpls()):
            info = self.plugins.get(impl.plugin_name)
            if info is None:
                continue
            before = set(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                for name in set(cli.commands) - before:
                    del cli.commands[name]
                self.fail(info, info.module, "register_commands", exc)

    def host(self) -> PluginHost:
        host = PluginHost(self.manager, self.registry, list(self.plugins.values()), self.failures)
        if self.strict and self.failures:
            details = "\n".join(f.describe() + "\n" + f.traceback for f in self.failures)
            raise PluginError(f"LMFORGE_STRICT_PLUGINS=1 and {len(self.failures)} plugin(s) "
                              f"failed:\n{details}")
        return host


def _info_from_entry_point(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    name = dist.name if dist else "unknown"
    return PluginInfo(name=ep.name, distribution=name,
                      version=dist.version if dist else "unknown",
                      builtin=name == BUILTIN_DISTRIBUTION, module=ep.value)


def load_plugins(environ: Mapping[str, str] | None = None, cli=None) -> PluginHost:
    """Load the built-ins and the installed plugins the switches allow, fill the registry and,
    given the root `click.Group`, let plugins add their commands to it.

    Built-ins are the entry points of the lmforge distribution and load the way any installed
    plugin does. Switches (read from `environ`, default `os.environ`): LMFORGE_LOAD_PLUGINS=a,b
    loads only those third-party plugins (empty: none); LMFORGE_DISABLE_PLUGINS=a,b skips those
    (built-ins too); LMFORGE_STRICT_PLUGINS=1 raises PluginError when any plugin fails. Names are
    entry point or distribution names.
    """
    loader = _Loader(os.environ if environ is None else environ)
    loader.load_entry_points()
    loader.register_components()
    if cli is not None:
        loader.add_commands(cli)
    return loader.host()
