"""Plugin discovery (entry points of group `adapt`) and the per-run plugin manager.

Built-in plugins are entry points of this distribution and are found exactly like third-party ones.
`ADAPT_DISABLE_PLUGIN_AUTOLOAD=1` keeps only the built-ins (third-party packages stay installed but
are not imported), as pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD does.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from adapt import hookimpl, hookspecs
from adapt.plugin import defaults
from adapt.plugin.hooks import Hooks
from adapt.recipe.loader import Recipe
from adapt.types import PluginInfo

ENTRY_POINT_GROUP = "adapt"
BUILTIN_DISTRIBUTION = "adapt-peft"  # the distribution; the import name and the command stay `adapt`
DISABLE_AUTOLOAD_ENV = "ADAPT_DISABLE_PLUGIN_AUTOLOAD"
HOOK_PREFIX = "adapt_"
HOOK_NAMES = sorted(n for n in vars(hookspecs) if n.startswith(HOOK_PREFIX))


def is_builtin_distribution(name: str | None) -> bool:
    """Whether distribution `name` is adapt itself (names compare as pip normalises them: adapt_peft, Adapt.Peft)."""
    return name is not None and re.sub(r"[-_.]+", "-", name).lower() == BUILTIN_DISTRIBUTION


# The options @hookimpl gives when used without arguments.
_PLAIN_IMPL_OPTS = dict(hookimpl(lambda: None).adapt_impl)


class AdaptPluginManager(pluggy.PluginManager):
    """Like pytest's manager: a function named `adapt_*` is a hook implementation even without the
    `@hookimpl` marker, so a forgotten decorator cannot silently disable a hook."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            attr = inspect.getattr_static(plugin, name, None)
            if callable(attr) or isinstance(attr, (staticmethod, classmethod)):
                return pluggy.HookimplOpts(**_PLAIN_IMPL_OPTS)
        return opts


def new_manager() -> AdaptPluginManager:
    pm = AdaptPluginManager("adapt")
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name="adapt.defaults")
    return pm


def unknown_hooks(pm: pluggy.PluginManager, name: str) -> list[str]:
    """Problems for hooks of plugin `name` that no spec declares, each with a suggestion."""
    problems = []
    for caller in pm.get_hookcallers(pm.get_plugin(name)) or []:
        if not caller.has_spec():
            close = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown hook '{caller.name}'{hint}")
    return problems


@dataclass
class PluginEntry:
    """One discovered plugin. `factory` is what the entry point names: a module or an object is
    registered as is, a class is instantiated afresh for every run (so plugins may keep run state)."""

    name: str
    factory: Any
    info: PluginInfo
    origin: str  # "built-in", "third-party" or "registered" (passed in directly, as tests do)
    distribution: str | None = None
    version: str | None = None
    value: str = ""

    def instantiate(self) -> Any:
        return self.factory() if isinstance(self.factory, type) else self.factory


def parameter_problems(plugin: Any) -> list[str]:
    """Hook implementations asking for a parameter that their hook never passes (a typo such as `log` for
    `logs`), each with the hook's parameters and a suggestion. Parameters with defaults are not asked for."""
    problems = []
    for hook in HOOK_NAMES:
        function = getattr(plugin, hook, None)
        if not callable(function):
            continue
        try:
            wanted = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            continue
        passed = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        for param in wanted:
            if param.default is param.empty and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                if param.name not in passed:
                    close = difflib.get_close_matches(param.name, passed, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    problems.append(
                        f"{hook} asks for '{param.name}', which it is never passed (it passes: "
                        f"{', '.join(passed) or 'nothing'}){hint}"
                    )
    return problems


def api_problem(required: str | None) -> str | None:
    """Why a plugin that requires hook API `required` cannot run with this adapt, or None."""
    if required is None:
        return None
    have = tuple(int(n) for n in hookspecs.HOOK_API.split("."))
    if not re.fullmatch(r"\d+\.\d+", required):
        return f"requires_api '{required}' is not a hook API version MAJOR.MINOR (adapt's is {hookspecs.HOOK_API})"
    major, minor = (int(n) for n in required.split("."))
    if major == have[0] and minor <= have[1]:
        return None
    fix = "upgrade adapt-peft" if (major, minor) > have else f"install a version of the plugin written for {have[0]}.x"
    return f"requires hook API {required}, but adapt has {hookspecs.HOOK_API}: {fix}"


def _describe(name: str, plugin: Any) -> PluginInfo:
    """Register `plugin` alone, check its hook names and signatures, and ask it to describe itself."""
    problems = parameter_problems(plugin)
    if problems:
        raise ValueError("; ".join(problems))
    pm = new_manager()
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise ValueError(str(exc).replace(repr(plugin), f"'{name}'")) from None
    problems = unknown_hooks(pm, name)
    if problems:
        raise ValueError("; ".join(problems))
    pm.check_pending()
    info = Hooks(pm).plugin_info() or PluginInfo()
    if not isinstance(info, PluginInfo):
        raise ValueError(f"adapt_plugin_info returned {type(info).__name__}, expected adapt.PluginInfo")
    problem = api_problem(info.requires_api)
    if problem:
        raise ValueError(problem)
    return info


class Catalogue:
    """Every plugin that can take part in a run, and those that failed to load (with why)."""

    def __init__(self, entries: Iterable[PluginEntry] = (), broken: Mapping[str, str] | None = None):
        self.entries: dict[str, PluginEntry] = {e.name: e for e in entries}
        self.broken: dict[str, str] = dict(broken or {})

    @property
    def infos(self) -> dict[str, PluginInfo]:
        return {name: entry.info for name, entry in self.entries.items()}

    def add(self, name: str, factory: Any, origin: str = "registered", **meta: Any) -> None:
        try:
            info = _describe(name, factory() if isinstance(factory, type) else factory)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            self.broken[name] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
            return
        self.entries[name] = PluginEntry(name, factory, info, origin, **meta)

    def clash(self, name: str, first: tuple[str | None, str | None], second: tuple[str | None, str | None]) -> None:
        """Two distributions register plugin `name`. A built-in keeps it, and the other is reported (never a
        silent displacement); between two third-party ones neither is chosen."""

        def label(dist: tuple[str | None, str | None]) -> str:
            return f"{dist[0]} {dist[1]}" if dist[0] else "an unknown distribution"

        builtin = [d for d in (first, second) if is_builtin_distribution(d[0])]
        if builtin:
            other = second if builtin[0] is first else first
            self.broken[f"{name} (from {label(other)})"] = (
                f"registers the plugin name '{name}', which is adapt's built-in; the built-in is used: rename the "
                f"entry point or uninstall {other[0]}"
            )
            return
        self.entries.pop(name, None)
        self.broken[name] = (
            f"two installed distributions register the plugin name '{name}': {label(first)} and {label(second)}; "
            "uninstall one"
        )

    @classmethod
    def discover(cls, extra: Mapping[str, Any] | None = None) -> Catalogue:
        """Load the `adapt` entry points (only the built-ins when autoload is disabled), plus `extra`."""
        catalogue = cls()
        seen: dict[str, tuple[str | None, str | None]] = {}  # plugin name -> (distribution, version)
        builtins_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip() not in ("", "0")

        def is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
            return ep.dist is not None and is_builtin_distribution(ep.dist.name)

        # Built-ins first, so that a third-party plugin taking a built-in's name never displaces it.
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: not is_builtin(e)):
            dist = ep.dist.name if ep.dist else None
            builtin = is_builtin_distribution(dist)
            if builtins_only and not builtin:
                continue
            version = ep.dist.version if ep.dist else None
            if ep.name in seen:
                catalogue.clash(ep.name, seen[ep.name], (dist, version))
                continue
            seen[ep.name] = (dist, version)
            meta = {
                "distribution": dist,
                "version": version,
                "value": ep.value,
            }
            try:
                factory = ep.load()
            except Exception as exc:  # noqa: BLE001
                catalogue.broken[ep.name] = f"cannot import {ep.value}: {type(exc).__name__}: {exc}"
                continue
            catalogue.add(ep.name, factory, "built-in" if builtin else "third-party", **meta)
        for name, plugin in (extra or {}).items():
            catalogue.add(name, plugin)
        return catalogue

    def selected(self, recipe: Recipe) -> list[PluginEntry]:
        """The plugins of a run: infrastructure (less the disabled), the head, then the methods.

        Later registrations are called first by pluggy, so a method's firstresult answer (a collator,
        parameter groups) takes precedence over the head's, and the head's over infrastructure's.
        """
        infra = [  # not disabled, and an opt-in plugin only where the recipe has its table
            e
            for e in self.entries.values()
            if e.info.kind == "infrastructure"
            and e.name not in recipe.disabled
            and (not e.info.opt_in or e.name in recipe.opted_in)
        ]
        return [*infra, self.entries[recipe.head], *(self.entries[m] for m in recipe.methods)]

    def provenance(self, recipe: Recipe) -> dict[str, dict[str, str | None]]:
        """Where each plugin of a run came from, for summary.json: what to install to load the run again."""
        return {
            e.name: {"kind": e.info.kind, "distribution": e.distribution, "version": e.version, "origin": e.origin}
            for e in self.selected(recipe)
        }

    def manager(self, recipe: Recipe, infrastructure: bool = True) -> AdaptPluginManager:
        """A fresh plugin manager holding the run's plugins, each a new instance; `infrastructure=False` leaves
        out the infrastructure plugins (a memory plan is none of their business: no progress bar, no tracker)."""
        pm = new_manager()
        for entry in self.selected(recipe):
            if not infrastructure and entry.info.kind == "infrastructure":
                continue
            pm.register(entry.instantiate(), name=entry.name)
        pm.check_pending()
        return pm

    def listing_manager(self) -> AdaptPluginManager:
        """All plugins registered at once; only for listing which hooks each implements."""
        pm = new_manager()
        for entry in self.entries.values():
            pm.register(entry.instantiate(), name=entry.name)
        return pm
