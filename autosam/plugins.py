"""The plugin manager and the registries of methods, planners and backbones.

Built-in methods and planners are registered exactly the way a third-party package does it:
through an entry point of the group ``autosam`` naming a module that implements hooks from
:mod:`autosam.hookspecs`. A plugin whose import fails is reported with a warning and skipped;
the others still load.

Plugins of the ``autosam`` distribution load first, then the others sorted by distribution and
entry-point name, so a third-party plugin that registers an existing name replaces the built-in
one (with a warning).
"""
from __future__ import annotations

import difflib
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
HOST_DISTRIBUTION = "autosam"
T = TypeVar("T")

#: The hooks that fill a registry, and the registry attribute of :class:`PluginSystem` they fill.
REGISTRATION_HOOKS = (("register_methods", "methods"), ("register_planners", "planners"), ("register_backbones", "backbones"))


class UnknownNameError(KeyError):
    """An unknown method/planner/backbone name; the message lists what exists."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass
class PluginInfo:
    """One plugin: its entry-point name, module, distribution, hooks, and its error if it failed."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Entry(Generic[T]):
    """A registered object and the plugin (and distribution) that registered it."""

    obj: T
    plugin: str
    distribution: str
    version: str


class Registry(Generic[T]):
    """A plain name -> object registry filled by ``register(obj)`` callbacks."""

    def __init__(self, kind: str, failed: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        #: One message per name that a later plugin registered again, replacing the earlier object.
        self.replacements: list[str] = []
        # Plugins that failed to load (shared with the PluginSystem): named in the unknown-name error,
        # since the missing name may be one of theirs.
        self._failed = failed if failed is not None else {}

    def make_register(self, plugin: PluginInfo):
        """The ``register`` callback handed to ``plugin``'s registration hook."""

        def register(obj: T) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{self.kind} registered by plugin {plugin.name!r} has no string 'name' attribute: {obj!r}")
            if name in self._entries:
                other = self._entries[name]
                message = (f"{self.kind} {name!r} from {plugin.distribution} (plugin {plugin.name!r}) replaces "
                           f"the one from {other.distribution} (plugin {other.plugin!r})")
                self.replacements.append(message)
                warnings.warn(message, stacklevel=2)
            self._entries[name] = Entry(obj, plugin.name, plugin.distribution, plugin.version)

        return register

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(f"{n} (from {e.distribution})" for n, e in sorted(self._entries.items())) or "none"
        msg = f"unknown {self.kind} {name!r}; available {self.kind}s: {known}"
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        if close:
            msg += f". Did you mean {close[0]!r}?"
        if self._failed:
            broken = "; ".join(f"{p}: {err}" for p, err in sorted(self._failed.items()))
            msg += f". These plugins failed to load and may provide it: {broken} (run autosam_plugins for details)"
        return msg

    def names(self) -> list[str]:
        return sorted(self._entries)

    def registered_by(self, plugin_name: str) -> list[str]:
        """Names registered by the plugin ``plugin_name``."""
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin_name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, Entry[T]]]:
        return sorted(self._entries.items())


@dataclass
class PluginSystem:
    """The plugin manager plus the filled registries.

    ``plugins`` lists the plugins that loaded (``error`` is set on one whose registration hook
    raised); ``failed_plugins`` those whose import or registration failed; ``failed`` maps the
    name of every plugin with a problem to its error message.
    """

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    methods: Registry
    planners: Registry
    backbones: Registry
    failed: dict[str, str]
    failed_plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def hook(self):
        """``pm.hook``: call hooks with keyword arguments, e.g. ``hook.method_suitability(fingerprint=..., dataset_json=...)``."""
        return self.pm.hook

    @property
    def replacements(self) -> list[str]:
        """Every method, planner or backbone that one plugin registered under a name another had
        already registered (the later one is used), one message each."""
        return [m for _, attr in REGISTRATION_HOOKS for m in getattr(self, attr).replacements]

    def registered_by(self, plugin_name: str) -> dict[str, list[str]]:
        """``{"methods": [...], "planners": [...], "backbones": [...]}`` registered by one plugin."""
        return {attr: getattr(self, attr).registered_by(plugin_name) for _, attr in REGISTRATION_HOOKS}


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _load_order(ep_and_dist: tuple[md.EntryPoint, str, str]) -> tuple:
    ep, dist, _ = ep_and_dist
    return (dist.lower() != HOST_DISTRIBUTION, dist.lower(), ep.name)


def _register_module(pm: pluggy.PluginManager, info: PluginInfo, module: Any) -> None:
    """Register ``module`` with ``pm``; fill ``info.hooks`` and warn about unknown hook names."""
    if pm.has_plugin(info.name):  # two distributions use the same entry-point name: keep both
        info.name = f"{info.distribution}:{info.name}"
    pm.register(module, name=info.name)
    hooks = []
    for caller in pm.get_hookcallers(module) or []:
        if caller.spec is None:  # pluggy accepts it silently; almost always a typo
            warnings.warn(
                f"autosam plugin {info.name!r} ({info.distribution}) implements {caller.name!r}, which is not an "
                f"autosam hook; known hooks: {', '.join(hook_names())}",
                stacklevel=3,
            )
        hooks.append(caller.name)
    info.hooks = sorted(hooks)


def hook_names() -> list[str]:
    """Names of all hooks in :mod:`autosam.hookspecs`."""
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "autosam_spec"))


def build_plugin_system(extra_plugins: list[tuple[str, Any]] | None = None, *, load_entry_points: bool = True) -> PluginSystem:
    """Create a plugin manager, load every ``autosam`` entry point and fill the registries.

    :param extra_plugins: ``(name, module_or_object)`` pairs registered after the entry points
        (distribution ``local``); used by tests and by scripts that define a plugin inline.
    :param load_entry_points: ``False`` loads only ``extra_plugins``.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    failed_infos: list[PluginInfo] = []
    failed: dict[str, str] = {}

    candidates: list[tuple[PluginInfo, Any]] = []
    if load_entry_points:
        eps = [(ep, *_distribution_of(ep)) for ep in md.entry_points(group=ENTRY_POINT_GROUP)]
        for ep, dist, version in sorted(eps, key=_load_order):
            candidates.append((PluginInfo(ep.name, ep.value, dist, version), ep))
    for name, module in extra_plugins or []:
        candidates.append((PluginInfo(name, getattr(module, "__name__", repr(module)), "local", "0"), module))

    for info, source in candidates:
        try:
            module = source.load() if isinstance(source, md.EntryPoint) else source
            _register_module(pm, info, module)
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"{type(exc).__name__}: {exc}"
            failed[info.name] = info.error
            failed_infos.append(info)
            warnings.warn(
                f"autosam plugin {info.name!r} ({info.distribution} {info.version}, {info.module}) failed to load: {info.error}",
                stacklevel=2,
            )
            continue
        infos.append(info)

    registries = {attr: Registry(attr[:-1], failed) for _, attr in REGISTRATION_HOOKS}
    for info in infos:
        for hookname, attr in REGISTRATION_HOOKS:
            for impl in getattr(pm.hook, hookname).get_hookimpls():
                if impl.plugin_name != info.name or impl.wrapper or impl.hookwrapper:
                    continue
                kwargs = {"register": registries[attr].make_register(info)}
                try:
                    impl.function(*[kwargs[a] for a in impl.argnames])
                except Exception as exc:
                    info.error = f"{hookname}: {type(exc).__name__}: {exc}"
                    failed[info.name] = info.error
                    if info not in failed_infos:
                        failed_infos.append(info)
                    warnings.warn(f"autosam plugin {info.name!r} ({info.distribution}) failed in {hookname}: {exc}", stacklevel=2)
    for info in infos:
        logger.debug("plugin %s (%s %s): hooks %s", info.name, info.distribution, info.version, info.hooks)
    return PluginSystem(pm, infos, registries["methods"], registries["planners"], registries["backbones"], failed, failed_infos)


@lru_cache(maxsize=1)
def get_plugin_system() -> PluginSystem:
    """The process-wide plugin system (built once, on first use)."""
    return build_plugin_system()


def reset_plugin_system() -> None:
    """Forget the process-wide plugin system; the next use loads the entry points again."""
    get_plugin_system.cache_clear()


def get_method(name: str):
    """The registered method called ``name`` (:class:`UnknownNameError` lists the others)."""
    return get_plugin_system().methods.get(name)


def get_planner(name: str):
    """The registered planner called ``name``."""
    return get_plugin_system().planners.get(name)


def get_backbone(name: str):
    """The registered backbone spec called ``name``."""
    return get_plugin_system().backbones.get(name)
