"""Components by kind and name, each with the plugin and distribution that provided it."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from lmforge.errors import RegistryError
from lmforge.settings import NoSettings, Settings

# kind -> the interface its components implement, as "module:class" (imported when a component
# of that kind registers, so loading the host imports no interface it does not need)
INTERFACES = {
    "data_source": "lmforge.interfaces.data:DataSource",
    "preprocessor": "lmforge.interfaces.data:Preprocessor",
    "tokenizer": "lmforge.interfaces.tokenizer:Tokenizer",
    "model": "lmforge.interfaces.model:Model",
    "task": "lmforge.interfaces.task:Task",
    "trainer": "lmforge.interfaces.trainer:Trainer",
    "exporter": "lmforge.interfaces.export:Exporter",
    "server": "lmforge.interfaces.export:Server",
    "metric": "lmforge.interfaces.metric:Metric",
    "callback": "lmforge.interfaces.callback:Callback",
    "config_section": "lmforge.settings:Settings",
}
# kind -> the hook that registers its components: register_data_sources, register_models, ...
KINDS = {kind: f"register_{kind}s" for kind in INTERFACES}


def interface(kind: str) -> type | None:
    """The class every component of `kind` must subclass (None: not declared yet)."""
    target = INTERFACES.get(kind)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_implements(kind: str, name: str, component: Any, plugin: str) -> None:
    """Refuse a component that is not a concrete subclass of its kind's interface."""
    base = interface(kind)
    if base is None:
        return
    where = f"{kind.replace('_', ' ')} {name!r} from plugin {plugin!r}"
    if not (isinstance(component, type) and issubclass(component, base)):
        raise RegistryError(f"{where}: expected a subclass of {base.__module__}."
                            f"{base.__qualname__}, got {component!r}")
    missing = sorted(getattr(component, "__abstractmethods__", ()))
    if missing:
        raise RegistryError(f"{where}: {component.__qualname__} does not implement "
                            f"{', '.join(missing)}, which {base.__qualname__} requires")


@dataclass(frozen=True)
class Provider:
    """Where a component came from."""

    plugin: str
    distribution: str
    version: str
    builtin: bool


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    component: Any
    settings: type[Settings]
    provider: Provider

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.component) or ""

    def create(self, settings: Settings | dict | None = None) -> Any:
        """Build the component from validated settings (or a dict to validate)."""
        if not isinstance(settings, Settings):
            settings = self.settings.model_validate(settings or {})
        instance = self.component(settings)
        instance.registered_name = self.name  # e.g. what a saved tokenizer file records
        return instance


class Registry:
    """All registered components, looked up by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, component: Any, settings: type[Settings] | None,
            provider: Provider) -> Entry:
        if kind not in self._entries:
            raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise RegistryError(f"plugin {provider.plugin!r} registered a {kind} with an "
                                f"invalid name {name!r}: names are non-empty strings")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by plugin {existing.provider.plugin!r} "
                f"({existing.provider.distribution} {existing.provider.version}) and by plugin "
                f"{provider.plugin!r} ({provider.distribution} {provider.version}); "
                f"disable one with LMFORGE_DISABLE_PLUGINS")
        check_implements(kind, name, component, provider.plugin)
        if kind == "config_section":
            settings = component  # a config section is its own settings schema
        settings = settings or getattr(component, "Settings", None) or NoSettings
        if not (isinstance(settings, type) and issubclass(settings, Settings)):
            raise RegistryError(f"{kind} {name!r} from plugin {provider.plugin!r}: settings must "
                                f"be a subclass of lmforge.settings.Settings, got {settings!r}")
        entry = Entry(kind, name, component, settings, provider)
        self._entries[kind][name] = entry
        return entry

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything one plugin registered (used when its registration fails midway)."""
        for by_name in self._entries.values():
            for name in [n for n, e in by_name.items() if e.provider.plugin == plugin]:
                del by_name[name]

    def get(self, kind: str, name: str) -> Entry:
        by_name = self._entries.get(kind)
        if by_name is None:
            raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if name not in by_name:
            available = ", ".join(sorted(by_name)) or "none (no plugin provides one)"
            kind_name = kind.replace("_", " ")
            raise RegistryError(f"unknown {kind_name} {name!r}; available: {available}")
        return by_name[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def find(self, name: str) -> list[Entry]:
        """Every component called `name`, whatever its kind."""
        return [by_name[name] for by_name in self._entries.values() if name in by_name]

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for _, e in sorted(self._entries[kind].items())]
