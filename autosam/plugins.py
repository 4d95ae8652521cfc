"""The plugin manager and the registries of methods, planners and backbones.

Built-in methods and planners are registered exactly the way a third-party package does it:
through an entry point of the group ``autosam`` naming a module that implements hooks from
:mod:`autosam.hookspecs`. A plugin whose import fails is reported with a warning and skipped.
"""
from __future__ import annotations

import importlib.metadata as md
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Iterator, TypeVar

import pluggy

from autosam import hookspecs

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "autosam"
T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown method/planner/backbone name; the message lists what exists."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass
class PluginInfo:
    """One loaded plugin: its entry-point name, module, distribution and hooks."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)


@dataclass
class Entry(Generic[T]):
    obj: T
    plugin: str
    distribution: str
    version: str


class Registry(Generic[T]):
    """A plain name -> object registry filled by ``register(obj)`` callbacks."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def make_register(self, plugin: PluginInfo):
        def register(obj: T) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{self.kind} registered by plugin {plugin.name!r} has no string 'name' attribute")
            if name in self._entries:
                other = self._entries[name]
                warnings.warn(
                    f"{self.kind} {name!r} from {plugin.distribution} replaces the one from {other.distribution}",
                    stacklevel=2,
                )
            self._entries[name] = Entry(obj, plugin.name, plugin.distribution, plugin.version)

        return register

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(f"{n} (from {e.distribution})" for n, e in sorted(self._entries.items())) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return sorted(self._entries.items())


@dataclass
class PluginSystem:
    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    methods: Registry
    planners: Registry
    backbones: Registry
    failed: dict[str, str]

    @property
    def hook(self):
        return self.pm.hook


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _hooks_of(module: Any) -> list[str]:
    names = [n for n in dir(hookspecs) if not n.startswith("_") and callable(getattr(hookspecs, n))]
    return sorted(n for n in names if n != "hookspec" and hasattr(getattr(module, n, None), "autosam_impl"))


def build_plugin_system(extra_plugins: list[tuple[str, Any]] | None = None) -> PluginSystem:
    """Create a plugin manager, load every ``autosam`` entry point and fill the registries.

    :param extra_plugins: ``(name, module_or_object)`` pairs registered in addition (used by tests).
    """
    pm = pluggy.PluginManager("autosam")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    failed: dict[str, str] = {}
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist, version = _distribution_of(ep)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            msg = f"{type(exc).__name__}: {exc}"
            failed[ep.name] = msg
            warnings.warn(f"autosam plugin {ep.name!r} ({dist} {version}, {ep.value}) failed to load: {msg}", stacklevel=2)
            continue
        infos.append(PluginInfo(ep.name, ep.value, dist, version, _hooks_of(module)))
    for name, module in extra_plugins or []:
        pm.register(module, name=name)
        infos.append(PluginInfo(name, getattr(module, "__name__", repr(module)), "local", "0", _hooks_of(module)))

    methods: Registry = Registry("method")
    planners: Registry = Registry("planner")
    backbones: Registry = Registry("backbone")
    for info in infos:
        plugin = pm.get_plugin(info.name)
        for hookname, registry in (
            ("register_methods", methods),
            ("register_planners", planners),
            ("register_backbones", backbones),
        ):
            impl = getattr(plugin, hookname, None)
            if impl is not None and hasattr(impl, "autosam_impl"):
                try:
                    impl(register=registry.make_register(info))
                except Exception as exc:
                    failed[info.name] = f"{hookname}: {type(exc).__name__}: {exc}"
                    warnings.warn(f"autosam plugin {info.name!r} failed in {hookname}: {exc}", stacklevel=2)
    return PluginSystem(pm, infos, methods, planners, backbones, failed)


@lru_cache(maxsize=1)
def get_plugin_system() -> PluginSystem:
    """The process-wide plugin system (built once, on first use)."""
    return build_plugin_system()


def get_method(name: str):
    return get_plugin_system().methods.get(name)


def get_planner(name: str):
    return get_plugin_system().planners.get(name)


def get_backbone(name: str):
    return get_plugin_system().backbones.get(name)
