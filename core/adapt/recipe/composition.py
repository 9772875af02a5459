"""How the methods a recipe names compose: in which order they apply and what stops them being named together.

The rules read only what each method declares in its `PluginInfo` (what it `provides`, what it `needs` beside it,
what it `runs_after`, what it `conflicts` with, by name or capability), so a third-party method composes with the
built-ins on their own terms (docs/plugins.md, `PluginInfo`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapt.types import PluginInfo, capability_text


def _must_follow(name: str, other: str, plugins: Mapping[str, PluginInfo]) -> bool:
    """Whether method `name` is applied after `other`: `other` provides what `name` runs after (or, deprecated,
    `name` names it in `after`)."""
    info = plugins[name]
    return other in info.after or bool(set(info.runs_after) & set(plugins[other].provides))


def order_methods(names: Sequence[str], plugins: Mapping[str, PluginInfo]) -> list[str]:
    """Recipe order, except that a method comes after every named method that provides what it runs after."""
    remaining = list(names)
    ordered: list[str] = []
    while remaining:
        for name in remaining:
            if not any(_must_follow(name, other, plugins) for other in remaining if other != name):
                ordered.append(name)
                remaining.remove(name)
                break
        else:  # a cycle of declarations: keep the recipe's order
            ordered.extend(remaining)
            break
    return ordered


def composition_problems(methods: Sequence[str], plugins: Mapping[str, PluginInfo]) -> list[str]:
    """What the named methods' declarations say against naming them together: an unmet need, a conflict."""
    problems = []
    for name in methods:
        info, beside = plugins[name], [m for m in methods if m != name]
        if info.needs and not any(set(info.needs) & set(plugins[m].provides) for m in beside):
            what = " or ".join(capability_text(c) for c in info.needs)
            methods_of_kind = (n for n, i in plugins.items() if n != name and i.kind == "method")
            givers = [n for n in methods_of_kind if set(info.needs) & set(plugins[n].provides)]
            if givers:
                problems.append(
                    f"methods: '{name}' needs one of {', '.join(givers)} beside it ([methods.{givers[0]}]): a method "
                    f"that {what}"
                )
            else:
                problems.append(f"methods: '{name}' needs a method that {what} beside it; no installed method does")
        needed = info.needs_one_of  # deprecated: names instead of capabilities
        if needed and not set(needed) & set(methods):
            problems.append(f"methods: '{name}' needs one of {', '.join(needed)} beside it ([methods.{needed[0]}])")
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            reason = _conflict(a, b, plugins) or _conflict(b, a, plugins)
            if reason:
                problems.append(f"methods: '{a}' cannot be combined with '{b}': {reason}")
    return problems


def _conflict(a: str, b: str, plugins: Mapping[str, PluginInfo]) -> str | None:
    """Why `a` refuses `b`, by `b`'s name or by what `b` provides, or None."""
    conflicts = plugins[a].conflicts
    if b in conflicts:
        return conflicts[b]
    return next((conflicts[c] for c in plugins[b].provides if c in conflicts), None)
